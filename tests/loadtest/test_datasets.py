"""Datasets with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from loadtest.config import DatasetConfig
from loadtest.datasets import build_sessions
from loadtest.datasets.mooncake import BLOCK_TOKENS
from loadtest.tokenizer import HFTokenizer


def test_random_prompts_have_exact_lengths_as_ids(tokenizer: HFTokenizer) -> None:
    cfg = DatasetConfig(num_prompts=20, input_len=100, output_len=10, range_ratio=0.2)
    sessions = build_sessions(cfg, tokenizer, as_text=False, seed=1)
    assert len(sessions) == 20
    for s in sessions:
        (turn,) = s.turns
        assert isinstance(turn.prompt, tuple) and len(turn.prompt) == turn.input_len
        assert 80 <= turn.input_len <= 120 and 8 <= turn.output_len <= 12
        assert not set(turn.prompt) & set(tokenizer.eos_token_ids)
    again = build_sessions(cfg, tokenizer, as_text=False, seed=1)
    assert [s.turns for s in again] == [s.turns for s in sessions]  # seeded


def test_random_text_prompts_are_no_longer_than_asked(tokenizer: HFTokenizer) -> None:
    cfg = DatasetConfig(num_prompts=10, input_len=64)
    for s in build_sessions(cfg, tokenizer, as_text=True, seed=2):
        (turn,) = s.turns
        assert isinstance(turn.prompt, str)
        assert len(tokenizer.encode(turn.prompt)) == turn.input_len
        assert 48 <= turn.input_len <= 64


def test_shared_prefixes_are_shared_exactly(tokenizer: HFTokenizer) -> None:
    cfg = DatasetConfig(
        name="shared-prefix", num_prefixes=3, suffixes_per_prefix=4, prefix_len=40, input_len=8
    )
    sessions = build_sessions(cfg, tokenizer, as_text=False, seed=3)
    prompts = [s.turns[0].prompt for s in sessions]
    assert len(prompts) == 12 and all(len(p) == 48 for p in prompts)
    prefixes = Counter(p[:40] for p in prompts)
    assert sorted(prefixes.values()) == [4, 4, 4]
    assert len({p[40:] for p in prompts}) == 12  # every suffix its own


def test_multi_turn_sessions_are_conversations(tokenizer: HFTokenizer) -> None:
    cfg = DatasetConfig(name="multi-turn", num_prompts=2, turns=3, input_len=12, output_len=4)
    sessions = build_sessions(cfg, tokenizer, as_text=False, seed=4)
    assert len(sessions) == 2
    assert all(s.conversation and len(s.turns) == 3 for s in sessions)
    assert all(isinstance(t.prompt, str) for s in sessions for t in s.turns)


def write_trace(path: Path) -> Path:
    rows = [  # out of order on purpose: replay goes by timestamp
        {"timestamp": 300, "input_length": 600, "output_length": 3, "hash_ids": [9, 10]},
        {"timestamp": 100, "input_length": 1100, "output_length": 2, "hash_ids": [1, 2, 3]},
        {"timestamp": 200, "input_length": 1024, "output_length": 4, "hash_ids": [1, 2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_mooncake_blocks_follow_hash_ids(tokenizer: HFTokenizer, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    cfg = DatasetConfig(name="mooncake", path=str(trace), time_scale=0.5)
    a, b, c = build_sessions(cfg, tokenizer, as_text=False, seed=5)
    assert [s.at for s in (a, b, c)] == pytest.approx([0.0, 0.05, 0.1])  # (t - t0) ms * scale
    pa, pb, pc = (s.turns[0].prompt for s in (a, b, c))
    assert (len(pa), len(pb), len(pc)) == (1100, 1024, 600)
    assert isinstance(pa, tuple) and isinstance(pb, tuple) and isinstance(pc, tuple)
    assert pa[: 2 * BLOCK_TOKENS] == pb  # hash ids 1, 2 in both
    assert pc[:BLOCK_TOKENS] != pa[:BLOCK_TOKENS]
    assert [s.turns[0].output_len for s in (a, b, c)] == [2, 4, 3]
    # Another seed (the next step of a sweep) salts the blocks: no stale cache hits.
    other = build_sessions(cfg, tokenizer, as_text=False, seed=6)[0].turns[0].prompt
    assert other[:BLOCK_TOKENS] != pa[:BLOCK_TOKENS]


def test_mooncake_text_keeps_equal_blocks_equal(tokenizer: HFTokenizer, tmp_path: Path) -> None:
    cfg = DatasetConfig(name="mooncake", path=str(write_trace(tmp_path / "t.jsonl")))
    a, b, _ = build_sessions(cfg, tokenizer, as_text=True, seed=5)
    ta, tb = a.turns[0].prompt, b.turns[0].prompt
    assert isinstance(ta, str) and isinstance(tb, str)
    assert ta.startswith(tb)


def test_sharegpt_takes_the_first_human_turn(tokenizer: HFTokenizer, tmp_path: Path) -> None:
    def turn(who: str, text: str) -> dict[str, str]:
        return {"from": who, "value": text}

    answer = "General Kenobi, you are a bold one"
    data = [
        {"conversations": [turn("human", "Hello there"), turn("gpt", answer)]},
        {"conversations": [turn("human", "only a question")]},
        {"conversations": [turn("system", "x"), turn("human", "What is 2+2?"), turn("gpt", "4")]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    cfg = DatasetConfig(name="sharegpt", path=str(path), num_prompts=10)
    sessions = build_sessions(cfg, tokenizer, as_text=True, seed=0)
    by_prompt = {s.turns[0].prompt: s.turns[0] for s in sessions}
    assert set(by_prompt) == {"Hello there", "What is 2+2?"}
    assert by_prompt["Hello there"].output_len == len(tokenizer.encode(answer))
    ids = build_sessions(cfg, tokenizer, as_text=False, seed=0)
    assert all(isinstance(s.turns[0].prompt, tuple) for s in ids)


def test_file_datasets_need_a_path() -> None:
    with pytest.raises(ValueError, match="dataset_path"):
        DatasetConfig(name="mooncake")
