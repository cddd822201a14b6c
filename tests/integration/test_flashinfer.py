"""The flashinfer backend gives the torch reference's greedy tokens, to bfloat16's
precision. Needs CUDA + flashinfer."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_flashinfer_matches_torch_backend(tmp_path: Path) -> None:
    from tests.helpers.hf_reference import build_tiny_checkpoint

    path = build_tiny_checkpoint("qwen3", tmp_path / "m", head_dim=64)  # a size flashinfer ships
    batch = prompts((5, 40, 130, 17))  # chunked prefills beside decodes
    runs = {
        backend: [
            Greedy.of(o) for o in run_steps(cuda_engine(path, True, backend), batch, GREEDY_TOP5)
        ]
        for backend in ("flashinfer", "torch")
    }
    assert_greedy_close(runs["flashinfer"], runs["torch"])
