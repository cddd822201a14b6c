"""Conversations: each turn's user message is random text; the answers come from the server.

The runner sends turn k once turn k-1 has finished, with the whole history (every earlier
user message and the answer actually received) as the prompt.
"""

from __future__ import annotations

import numpy as np

from loadtest.config import DatasetConfig
from loadtest.datasets.base import PromptMaker, Session, Turn, sample_lens

DEFAULT_CONVERSATIONS = 32


def conversation_sessions(
    cfg: DatasetConfig, maker: PromptMaker, rng: np.random.Generator, n: int, output_len: int
) -> list[Session]:
    sessions = []
    for _ in range(n):
        inputs = sample_lens(rng, cfg.input_len, cfg.range_ratio, cfg.turns)
        outputs = sample_lens(rng, output_len, cfg.range_ratio, cfg.turns)
        turns = []
        for in_len, out_len in zip(inputs, outputs, strict=True):
            text = maker.text(maker.ids(rng, in_len))
            turns.append(Turn(text, len(maker.tokenizer.encode(text)), out_len))
        sessions.append(Session(tuple(turns), conversation=True))
    return sessions
