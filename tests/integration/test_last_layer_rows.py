"""The model's last layer computes only the rows a step reads (engine/model/llama.py): what
it returns for them is what a full forward returns for the same rows, and the rows it
skipped still wrote their keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.attention import BatchLayout, SeqSlice
from engine.model.loader import build_model, read_checkpoint
from engine.runner import ModelRunner

BLOCK = 16


def _runner(path: Path, dtype: torch.dtype) -> ModelRunner:
    cfg, tensors, _ = read_checkpoint(path)
    model = build_model(cfg, tensors, dtype, torch.device("cpu"), str(path))
    return ModelRunner(model, num_blocks=8, block_size=BLOCK, attention_backend="torch")


def _forward(
    runner: ModelRunner, ids: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    # two prompts, 20 and 7 tokens, each from its start
    layout = BatchLayout((SeqSlice(0, 20, 20, (0, 1)), SeqSlice(20, 7, 7, (2,))), 27)
    runner.attn.prepare(layout)
    with torch.inference_mode():
        out: torch.Tensor = runner.model(ids, pos, runner.attn, keep)
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen3_moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_rows_match_a_full_forward(
    tiny_checkpoints: dict[str, Path], kind: str, dtype: torch.dtype
) -> None:
    runner = _runner(tiny_checkpoints[kind], dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, runner.model.cfg.vocab_size, (27,), generator=g)
    pos = torch.cat([torch.arange(20), torch.arange(7)])
    full = _forward(runner, ids, pos, None)
    cache = runner.kv_cache.clone()
    runner.kv_cache.zero_()
    keep = torch.tensor([19, 3, 26, 19])  # any rows, in any order, a row twice
    kept = _forward(runner, ids, pos, keep)
    assert kept.shape == (4, full.shape[1])
    torch.testing.assert_close(kept, full[keep])
    assert torch.equal(runner.kv_cache, cache), "every row's keys and values are written"


@pytest.mark.parametrize("kind", ["llama", "qwen3_moe"])
def test_no_rows_kept(tiny_checkpoints: dict[str, Path], kind: str) -> None:
    """A prefill chunk that samples nothing: the cache is written, no hidden state made."""
    runner = _runner(tiny_checkpoints[kind], torch.float32)
    ids = torch.arange(27) % runner.model.cfg.vocab_size
    pos = torch.cat([torch.arange(20), torch.arange(7)])
    out = _forward(runner, ids, pos, torch.tensor([], dtype=torch.long))
    assert out.shape == (0, runner.model.cfg.hidden_size)
    assert runner.kv_cache[:3].abs().sum() > 0
