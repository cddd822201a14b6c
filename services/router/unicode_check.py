"""Whether a parsed JSON body holds text that is no text: JSON's "\\ud800" escapes parse
to lone surrogates, which UTF-8 cannot encode, so the tokenizer, protobuf and our own
error bodies would each fail on one later (protocol.py refuses them up front)."""

from __future__ import annotations

from typing import Any

_SCALARS = frozenset((int, float, bool, type(None)))  # what JSON parses that holds no text


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in `value` (JSON: nested lists and dicts, keys too) holds one.
    Iterative: a body may nest as deep as the JSON parser allows."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and not _encodes(v):
                return True
        elif isinstance(v, list):
            if not _SCALARS.issuperset(map(type, v)):  # a prompt's thousands of token ids:
                stack.extend(v)  # passed over at C speed, not one by one (0.45 ms for 4k)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
    return False


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
