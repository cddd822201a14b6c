"""The decode step replayed from CUDA graphs (engine/cuda_graph.py) gives the eager
flashinfer step's greedy tokens, to bfloat16's precision, padded batches included.
Needs CUDA + flashinfer."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cuda_graph import CudaGraphDecode
from tests.helpers.engine_steps import record_batch_sizes
from tests.helpers.gpu import (
    GREEDY_TOP5,
    Greedy,
    assert_greedy_close,
    cuda_engine,
    flashinfer_missing,
    prompts,
    run_steps,
)

pytestmark = pytest.mark.skipif(flashinfer_missing() is not None, reason=str(flashinfer_missing()))


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_graph_decode_matches_eager(tmp_path: Path, kind: str) -> None:
    """Seven prompts over at most four sequences: full batches of 4, and 3 padded to 4."""
    from tests.helpers.hf_reference import build_tiny_checkpoint

    path = build_tiny_checkpoint(kind, tmp_path / kind, head_dim=64)  # a size flashinfer ships
    batch = prompts((3, 16, 31, 77, 150, 5, 9))
    want = [Greedy.of(o) for o in run_steps(cuda_engine(path, eager=True), batch, GREEDY_TOP5)]

    engine = cuda_engine(path, eager=False)
    graphs = engine.runner.compiled  # type: ignore[attr-defined]
    assert isinstance(graphs, CudaGraphDecode) and graphs.sizes == (1, 2, 4)
    sizes = record_batch_sizes(graphs)
    got = [Greedy.of(o) for o in run_steps(engine, batch, GREEDY_TOP5)]
    assert_greedy_close(got, want)
    assert {3, 4} <= set(sizes), sizes  # a full batch and a padded one replayed
