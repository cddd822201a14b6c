"""Random prompts, and prompts that share prefixes exactly."""

from __future__ import annotations

import numpy as np

from loadtest.config import DatasetConfig
from loadtest.datasets.base import PromptMaker, Session, Turn, sample_lens


def random_sessions(
    cfg: DatasetConfig, maker: PromptMaker, rng: np.random.Generator, n: int, output_len: int
) -> list[Session]:
    inputs = sample_lens(rng, cfg.input_len, cfg.range_ratio, n)
    outputs = sample_lens(rng, output_len, cfg.range_ratio, n)
    sessions = []
    for in_len, out_len in zip(inputs, outputs, strict=True):
        prompt, count = maker.render(maker.ids(rng, in_len))
        sessions.append(Session((Turn(prompt, count, out_len),)))
    return sessions


def shared_prefix_sessions(
    cfg: DatasetConfig, maker: PromptMaker, rng: np.random.Generator, output_len: int
) -> list[Session]:
    """num_prefixes x suffixes_per_prefix prompts: prefix (prefix_len tokens, shared) + suffix
    (input_len tokens, its own), in a shuffled order so a prefix's requests are spread out.
    As token ids the shared part is exact; as text the prefix string is (its last token
    may merge with the suffix's first when the server tokenizes)."""
    n = cfg.num_prefixes * cfg.suffixes_per_prefix
    suffix_lens = sample_lens(rng, cfg.input_len, cfg.range_ratio, n)
    outputs = sample_lens(rng, output_len, cfg.range_ratio, n)
    sessions = []
    for p in range(cfg.num_prefixes):
        prefix = maker.ids(rng, cfg.prefix_len)
        prefix_text = maker.text(prefix) if maker.as_text else ""
        for s in range(cfg.suffixes_per_prefix):
            i = p * cfg.suffixes_per_prefix + s
            suffix = maker.ids(rng, suffix_lens[i])
            if maker.as_text:
                text = prefix_text + maker.text(suffix)
                turn = Turn(text, len(maker.tokenizer.encode(text)), outputs[i])
            else:
                turn = Turn(tuple(prefix + suffix), len(prefix) + len(suffix), outputs[i])
            sessions.append(Session((turn,)))
    order = rng.permutation(n)
    return [sessions[i] for i in order]
