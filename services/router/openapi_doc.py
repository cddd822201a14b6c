"""The router's OpenAPI document as served (/openapi.json): what FastAPI derives from the
request models in protocol.py, with the bounds only the running router knows filled in,
so that generated clients and fuzzers send what the API really accepts."""

from __future__ import annotations

from typing import Any

from services.router.body_types import BELOW_VOCAB

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def served_openapi(openapi: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """FastAPI's OpenAPI document for this app as served, changed in place (and again
    harmlessly): token ids bounded by the served vocabulary, and integral bounds written
    as integers. FastAPI's model types every bound as a float, so an integer field's
    minimum 1 reads 1.0 and 2**63 - 1 would lose digits; our bounds are integers or powers
    of two, which survive the float exactly."""
    stack: list[Any] = [openapi]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.pop(BELOW_VOCAB, False):
                node["exclusiveMaximum"] = vocab_size
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = int(value)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return openapi
