"""The flashinfer backend must give the torch reference's tokens. Needs CUDA + flashinfer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine import CacheConfig, Engine, EngineConfig, SamplingParams, SchedulerConfig


def _flashinfer_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device on this machine; the flashinfer backend runs on GPUs only"
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return "flashinfer is not installed (pip install tandem[cuda])"
    return None


pytestmark = pytest.mark.skipif(
    _flashinfer_missing() is not None, reason=str(_flashinfer_missing())
)


def _tokens(path: Path, backend: str) -> list[list[int]]:
    cfg = EngineConfig(
        model=str(path),
        dtype="bfloat16",
        device="cuda",
        attention_backend=backend,
        cache=CacheConfig(num_blocks=128),
        scheduler=SchedulerConfig(max_num_batched_tokens=64),  # chunked prefill + decode mixed
    )
    engine = Engine(cfg, load_tokenizer_files=False)
    rng = random.Random(0)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (5, 40, 130)]
    out = engine.generate(prompts, SamplingParams(max_tokens=32, ignore_eos=True))
    engine.pool.check_integrity()
    assert engine.pool.is_idle()
    return [c.token_ids for c in out]


def test_flashinfer_matches_torch_backend(tmp_path: Path) -> None:
    from tests.helpers.hf_reference import build_tiny_checkpoint

    path = build_tiny_checkpoint(
        "qwen3", tmp_path / "m", head_dim=64
    )  # a head size flashinfer ships
    assert _tokens(path, "flashinfer") == _tokens(path, "torch")
