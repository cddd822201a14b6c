"""ShareGPT-style files: a JSON list of {"conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]}. The first human turn is the prompt; the answer that
follows it gives the output length (its token count), unless output_len is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.datasets.base import PromptMaker, Session, Turn

_HUMAN = {"human", "user"}
_MODEL = {"gpt", "chatgpt", "assistant", "model"}


def sharegpt_sessions(
    path: str | Path,
    maker: PromptMaker,
    rng: np.random.Generator,
    n: int,
    output_len: int | None,
) -> list[Session]:
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    sessions = []
    for i in rng.permutation(len(entries)):  # a seeded sample, not the file's first n
        turn = _turn(entries[i], maker, output_len)
        if turn is not None:
            sessions.append(Session((turn,)))
            if len(sessions) == n:
                break
    if not sessions:
        raise ValueError(f"{path}: no conversation with a human turn followed by an answer")
    return sessions


def _turn(entry: Any, maker: PromptMaker, output_len: int | None) -> Turn | None:
    conv = entry.get("conversations", []) if isinstance(entry, dict) else []
    for first, second in zip(conv, conv[1:], strict=False):
        if first.get("from") in _HUMAN and second.get("from") in _MODEL:
            ids = maker.tokenizer.encode(str(first.get("value", "")))
            out = output_len or len(maker.tokenizer.encode(str(second.get("value", ""))))
            if not ids or out < 1:
                return None
            if maker.as_text:
                return Turn(str(first["value"]), len(ids), out)
            return Turn(tuple(ids), len(ids), out)
    return None
