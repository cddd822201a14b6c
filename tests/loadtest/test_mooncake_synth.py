"""Synthetic Mooncake traces: the format, the reuse they promise, and a replay of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.config import DatasetConfig
from loadtest.datasets import build_sessions
from loadtest.datasets.mooncake import read_trace
from loadtest.datasets.mooncake_synth import (
    BLOCK_TOKENS,
    SynthConfig,
    main,
    shared_block_share,
    synth_trace,
    write_trace,
)
from loadtest.tokenizer import HFTokenizer


def test_rows_have_the_mooncake_fields_and_consistent_lengths() -> None:
    rows = synth_trace(SynthConfig(requests=200, rate=10.0, seed=1))
    assert len(rows) == 200
    times = [r["timestamp"] for r in rows]
    assert times[0] == 0 and times == sorted(times)
    assert 12_000 < times[-1] < 28_000  # ~20 s at 10 requests/s
    for r in rows:
        assert set(r) == {"timestamp", "input_length", "output_length", "hash_ids"}
        n = len(r["hash_ids"])
        assert 1 <= n <= 10
        assert (n - 1) * BLOCK_TOKENS < r["input_length"] <= n * BLOCK_TOKENS
        assert 8 <= r["output_length"] <= 24
    assert synth_trace(SynthConfig(requests=200, rate=10.0, seed=1)) == rows  # seeded
    assert synth_trace(SynthConfig(requests=200, rate=10.0, seed=2)) != rows


def test_shared_blocks_are_prefixes_and_popular_ones_dominate() -> None:
    rows = synth_trace(SynthConfig(requests=400, seed=3))
    first_at: dict[int, int] = {}  # hash id -> its position in the first row holding it
    for r in rows:
        for pos, h in enumerate(r["hash_ids"]):
            assert first_at.setdefault(h, pos) == pos  # an id always sits at one depth
    heads = [r["hash_ids"][0] for r in rows]
    top = max(set(heads), key=heads.count)
    assert heads.count(top) > len(rows) / 10  # Zipf: the hottest family is common
    assert 0.5 < shared_block_share(rows) < 0.95
    no_reuse = synth_trace(SynthConfig(requests=100, families=1000, zipf=0.0, followup=0.0))
    assert shared_block_share(no_reuse) < shared_block_share(rows)


def test_followups_extend_a_recent_request() -> None:
    rows = synth_trace(SynthConfig(requests=300, followup=1.0, families=1, max_blocks=64))
    # Every row after the first continues an earlier one: its full blocks lead it.
    for i, r in enumerate(rows[1:], 1):
        fulls = [p["hash_ids"][: p["input_length"] // BLOCK_TOKENS] for p in rows[:i]]
        assert any(f and r["hash_ids"][: len(f)] == f for f in fulls)


@pytest.mark.parametrize("bad", [{"rate": 0}, {"family_blocks": (3, 2)}, {"followup": 1.5}])
def test_bad_configs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**bad)  # type: ignore[arg-type]


def test_the_trace_replays_through_the_mooncake_dataset(
    tmp_path: Path, tokenizer: HFTokenizer
) -> None:
    path = write_trace(synth_trace(SynthConfig(requests=30, rate=20.0, seed=4)), tmp_path / "t")
    assert len(read_trace(path)) == 30
    cfg = DatasetConfig("mooncake", str(path))
    sessions = build_sessions(cfg, tokenizer, as_text=False, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for s, r in zip(sessions, rows, strict=True):
        assert s.at == pytest.approx(r["timestamp"] / 1000)
        assert len(s.turns[0].prompt) == r["input_length"]
    # Requests that share a leading hash id share its 512 tokens.
    by_head: dict[int, tuple[int, ...]] = {}
    for s, r in zip(sessions, rows, strict=True):
        prompt = s.turns[0].prompt
        assert isinstance(prompt, tuple)  # token ids
        block = prompt[:BLOCK_TOKENS]
        if r["input_length"] >= BLOCK_TOKENS:
            assert by_head.setdefault(r["hash_ids"][0], block) == block


def test_command_line_writes_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    main(["--out", str(out), "--requests", "20", "--tail-blocks", "0,1", "--seed", "5"])
    assert len(read_trace(out)) == 20
    assert "wrote 20 requests" in capsys.readouterr().out
