"""Datasets: each turns its config into sessions of turns (see base.py for the shapes).

| name          | prompts                                              | output length        |
|---------------|------------------------------------------------------|----------------------|
| random        | input_len random tokens (+- range_ratio)             | output_len (+- ratio)|
| shared-prefix | num_prefixes x suffixes_per_prefix: prefix + suffix  | output_len (+- ratio)|
| multi-turn    | conversations of `turns` random user messages        | output_len per turn  |
| mooncake      | a trace's blocks by hash id, replayed by timestamp   | the trace's          |
| sharegpt      | the first human turn of each conversation            | the recorded answer's|
"""

from __future__ import annotations

import numpy as np

from loadtest.config import DEFAULT_NUM_PROMPTS, DEFAULT_OUTPUT_LEN, DatasetConfig
from loadtest.datasets.base import Prompt, PromptMaker, Session, TokenizerLike, Turn
from loadtest.datasets.mooncake import trace_sessions
from loadtest.datasets.multi_turn import DEFAULT_CONVERSATIONS, conversation_sessions
from loadtest.datasets.sharegpt import sharegpt_sessions
from loadtest.datasets.synthetic import random_sessions, shared_prefix_sessions

__all__ = ["Prompt", "Session", "TokenizerLike", "Turn", "build_sessions"]


def build_sessions(
    cfg: DatasetConfig,
    tokenizer: TokenizerLike,
    as_text: bool,
    seed: int,
    limit: int | None = None,
) -> list[Session]:
    """The dataset's sessions, at most `limit` of them (warm-up takes a few)."""
    maker = PromptMaker(tokenizer, as_text or cfg.name == "multi-turn")
    rng = np.random.default_rng(seed)
    out_len = cfg.output_len or DEFAULT_OUTPUT_LEN
    if cfg.name == "random":
        n = limit or cfg.num_prompts or DEFAULT_NUM_PROMPTS
        return random_sessions(cfg, maker, rng, n, out_len)
    if cfg.name == "shared-prefix":
        return shared_prefix_sessions(cfg, maker, rng, out_len)[:limit]
    if cfg.name == "multi-turn":
        n = limit or cfg.num_prompts or DEFAULT_CONVERSATIONS
        return conversation_sessions(cfg, maker, rng, n, out_len)
    assert cfg.path is not None  # checked by DatasetConfig
    if cfg.name == "mooncake":
        return trace_sessions(cfg.path, maker, seed, limit or cfg.num_prompts, cfg.time_scale)
    n = limit or cfg.num_prompts or DEFAULT_NUM_PROMPTS
    return sharegpt_sessions(cfg.path, maker, rng, n, cfg.output_len)
