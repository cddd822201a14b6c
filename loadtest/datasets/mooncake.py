"""Mooncake traces: one JSON object a line, replayed by timestamp.

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}

`timestamp` is in milliseconds; `hash_ids` names each 512-token block of the prompt, and
requests that share a hash id share that block. Each block's tokens are drawn from a
generator seeded with (salt, hash id) alone, so equal ids give equal blocks in any request.
The salt changes with each step of a sweep (and for warm-up), so a replay does not find
the previous step's blocks in the server's prefix cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.datasets.base import PromptMaker, Session, Turn

BLOCK_TOKENS = 512


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"timestamp", "input_length", "output_length"} - set(row)
            if missing:
                raise ValueError(f"{path}:{lineno}: missing {sorted(missing)}")
            rows.append(row)
    rows.sort(key=lambda r: r["timestamp"])  # stable: equal times keep file order
    return rows


def trace_sessions(
    path: str | Path, maker: PromptMaker, salt: int, limit: int | None, time_scale: float
) -> list[Session]:
    rows = read_trace(path)[:limit]
    blocks = _Blocks(maker, salt)
    t0 = rows[0]["timestamp"] if rows else 0
    sessions = []
    for i, row in enumerate(rows):
        at = (int(row["timestamp"]) - int(t0)) / 1000.0 * time_scale
        turn = blocks.turn(row, np.random.default_rng([salt, 1 << 40, i]))
        sessions.append(Session((turn,), at=at))
    return sessions


class _Blocks:
    """Block tokens (and their text) by hash id, made once each."""

    def __init__(self, maker: PromptMaker, salt: int) -> None:
        self.maker, self.salt = maker, salt
        self._ids: dict[int, list[int]] = {}
        self._text: dict[int, str] = {}

    def ids(self, hash_id: int) -> list[int]:
        if hash_id not in self._ids:
            rng = np.random.default_rng([self.salt, hash_id])
            self._ids[hash_id] = self.maker.ids(rng, BLOCK_TOKENS)
        return self._ids[hash_id]

    def text(self, hash_id: int) -> str:
        # Decoded block by block so equal leading blocks give equal leading text.
        if hash_id not in self._text:
            self._text[hash_id] = self.maker.text(self.ids(hash_id))
        return self._text[hash_id]

    def turn(self, row: dict[str, Any], rng: np.random.Generator) -> Turn:
        length, out_len = int(row["input_length"]), int(row["output_length"])
        hash_ids = [int(h) for h in row.get("hash_ids", [])]
        ids = [t for h in hash_ids for t in self.ids(h)][:length]
        tail = self.maker.ids(rng, length - len(ids))  # a trace shorter than its length
        if not self.maker.as_text:
            return Turn(tuple(ids + tail), length, out_len)
        whole, rest = divmod(length, BLOCK_TOKENS)
        text = "".join(self.text(h) for h in hash_ids[:whole])
        if len(hash_ids) > whole and rest:
            text += self.maker.text(self.ids(hash_ids[whole])[:rest])
        text += self.maker.text(tail) if tail else ""
        return Turn(text, len(self.maker.tokenizer.encode(text)), out_len)
