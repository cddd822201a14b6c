"""The compiled decode step (engine/compiled.py) traces the GEMMs the eager step chose:
each kind of our GEMM chain, looked up by the weight's id(), compiles into one graph
(fullgraph: no break back into Python) and gives what it gives eagerly, on the rows it
takes and on the rows it passes down (small integers: every order of the sums is exact);
UpcastLinear, which makes its copies on first use, is not traced."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.compiled import traceable
from engine.kernels import cpu
from engine.model import onednn, panels
from engine.model.gemm import UpcastLinear
from engine.model.onednn import PackedLinear
from engine.model.panels import PanelLinear
from engine.model.quant import Q8_0, QuantizedWeight, QuantLinear


@pytest.fixture(scope="module", autouse=True)
def kernels() -> Iterator[None]:
    assert cpu.load(), "the C++ CPU kernels failed to build here"
    yield


class Weight(nn.Module):
    """A weight held as a model holds one: a parameter of a module."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)


def _compiled_matches(linear: Callable[..., torch.Tensor], held: Weight, rows: list[int]) -> None:
    def step(x: torch.Tensor) -> torch.Tensor:
        return linear(x, held.w)

    graph = torch.compile(step, fullgraph=True, dynamic=False, options={"freezing": True})
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in rows:  # each row count its own graph, as each captured size is
            x = torch.randint(-3, 4, (n, held.w.shape[1]), generator=g).to(held.w.dtype)
            torch.testing.assert_close(graph(x), step(x), rtol=0, atol=0)


def test_panels_trace() -> None:
    if not cpu.bf16_panels():
        pytest.skip("the panel GEMM needs AVX-512 BF16, which this CPU lacks")
    held = Weight(torch.randint(-3, 4, (48, 64)).to(torch.bfloat16))
    linear = PanelLinear({id(held.w): panels.pack(held.w)}, 4, F.linear, prefetch=False)
    assert traceable(linear)
    _compiled_matches(linear, held, [1, 4, 8])  # 8 rows: past max_rows, F.linear


def test_onednn_packed_weights_trace_as_the_plain_gemm() -> None:
    """inductor lowers oneDNN's linear only on weights it packed itself: a graph takes the
    plain GEMM, which it packs (freezing)."""
    if not onednn.packable(torch.float32):
        pytest.skip("oneDNN does not pack float32 weights on this CPU")
    held = Weight(torch.randint(-3, 4, (48, 64)).float())
    linear = PackedLinear({id(held.w): onednn.pack(held.w)}, F.linear)
    assert traceable(linear)
    _compiled_matches(linear, held, [1, 8])


def test_gguf_blocks_trace() -> None:
    import gguf
    import numpy as np

    w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType(Q8_0))
    dense = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(Q8_0))
    held = Weight(torch.from_numpy(dense).float())
    q = QuantizedWeight(torch.from_numpy(blocks), Q8_0)
    linear = QuantLinear({id(held.w): q}, 4, F.linear)
    assert traceable(linear)
    _compiled_matches(linear, held, [1, 4, 8])


def test_a_chain_with_an_upcast_does_not_trace() -> None:
    assert traceable(F.linear)
    assert not traceable(UpcastLinear(8))
    assert not traceable(PackedLinear({}, UpcastLinear(8)))
