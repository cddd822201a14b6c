"""GEMMs from GGUF blocks (torch.ops.tandem.quant_linear, engine/model/quant.py) against
gguf-py's own quantizer and dequantizer and a float32 F.linear over its dequantized weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.kernels import cpu
from engine.model.quant import Q4_1, Q8_0, QuantizedWeight, QuantLinear, quant_matmul


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert cpu.load(), "the C++ CPU kernels failed to build here"


def quantized(
    qtype: int, out_features: int, in_features: int
) -> tuple[QuantizedWeight, torch.Tensor]:
    """Random weights through gguf-py: the blocks, and gguf-py's dequantized float32."""
    w = np.random.default_rng(qtype + in_features).standard_normal((out_features, in_features))
    blocks = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType(qtype))
    dense = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(qtype))
    return QuantizedWeight(torch.from_numpy(blocks), qtype), torch.from_numpy(dense).float()


@pytest.mark.parametrize("qtype", [Q4_1, Q8_0])
def test_blocks_expand_to_exactly_gguf_pys_values(qtype: int) -> None:
    q, dense = quantized(qtype, 40, 96)
    eye = torch.eye(96)
    # x = identity rows: y = the dequantized weights' columns; 8 rows take the row path,
    # all 96 the panel path
    for rows in (8, 96):
        got = torch.ops.tandem.quant_linear(eye[:rows], q.blocks, q.qtype)
        assert torch.equal(got, dense.T[:rows])


@pytest.mark.parametrize("qtype", [Q4_1, Q8_0])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 19, 40, 150, 301])
@pytest.mark.parametrize("in_features", [128, 192])
def test_matches_float32_linear_over_the_dequantized_weights(
    qtype: int, rows: int, in_features: int
) -> None:
    # rows <= 8 take the row path, more the panel path: 72 outputs are 4 full panels of 16
    # and a narrower one; 192 inputs are a chunk of 128 and a shorter one; 150 and 301
    # rows are prefill-sized (25 tiles of 6; 51 tiles of 5 or 6)
    q, dense = quantized(qtype, 72, in_features)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
    got = torch.ops.tandem.quant_linear(x, q.blocks, q.qtype)
    torch.testing.assert_close(got, F.linear(x, dense), rtol=1e-5, atol=1e-4)


def test_bad_inputs_are_refused_with_a_reason() -> None:
    q, _ = quantized(Q4_1, 8, 64)
    with pytest.raises(RuntimeError, match="qtype 2 is not one of"):
        torch.ops.tandem.quant_linear(torch.randn(1, 64), q.blocks, 2)
    with pytest.raises(RuntimeError, match="bytes a row"):
        torch.ops.tandem.quant_linear(torch.randn(1, 96), q.blocks, Q4_1)
    with pytest.raises(RuntimeError, match="x must be float32"):
        torch.ops.tandem.quant_linear(torch.randn(1, 64).double(), q.blocks, Q4_1)


def test_quant_linear_routes_by_rows_and_weight_and_adds_the_bias() -> None:
    q, dense = quantized(Q8_0, 16, 64)
    other = torch.randn(16, 64)
    fell_back: list[int] = []

    def fallback(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        fell_back.append(x.shape[0])
        return F.linear(x, w, b)

    linear = QuantLinear({id(dense): q}, max_rows=4, fallback=fallback)
    bias = torch.randn(16)
    x = torch.randn(4, 64)
    torch.testing.assert_close(
        linear(x, dense, bias), F.linear(x, dense, bias), rtol=1e-5, atol=1e-4
    )
    linear(torch.randn(5, 64), dense)  # more rows than measured to pay off
    linear(x, other)  # a weight without blocks
    assert fell_back == [5, 4]


def test_concat_stacks_rows_of_one_format_only() -> None:
    a, _ = quantized(Q4_1, 8, 64)
    b, _ = quantized(Q4_1, 4, 64)
    c, _ = quantized(Q8_0, 4, 64)
    both = QuantizedWeight.concat([a, b])
    assert both is not None and both.blocks.shape == (12, a.blocks.shape[1])
    assert QuantizedWeight.concat([a, c]) is None
    assert QuantizedWeight.concat([a, None]) is None


def test_bfloat16_activations_go_up_to_float32_and_come_back_rounded() -> None:
    q, dense = quantized(Q4_1, 24, 64)
    x = torch.randn(3, 64).to(torch.bfloat16)
    got = quant_matmul(x, q)
    assert got.dtype == torch.bfloat16
    # within one bfloat16 rounding step of the float32 product rounded once
    torch.testing.assert_close(got, F.linear(x.float(), dense).to(torch.bfloat16))
