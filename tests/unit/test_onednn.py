"""float32 and bfloat16 GEMMs on oneDNN's packed weights (engine/model/onednn.py) against
F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model import onednn

pytestmark = pytest.mark.skipif(
    not onednn.packable(torch.float32), reason="this torch has no oneDNN"
)


# float32: the order of the sums; bfloat16: that, and the output's rounding (two bf16 steps)
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2**-6, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_gemm_equals_f_linear_up_to_the_order_of_sums(rows: int, dtype: torch.dtype) -> None:
    if not onednn.packable(dtype):
        pytest.skip(f"oneDNN packs no {dtype} weights on this CPU (AVX-512 BW/VL/DQ needed)")
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(96, 64, generator=g).to(dtype), torch.randn(96, generator=g).to(dtype)
    x = torch.randn(rows, 64, generator=g).to(dtype)
    linear = onednn.PackedLinear({id(w): onednn.pack(w)}, F.linear)
    rtol, atol = TOLERANCE[dtype]
    assert linear(x, w).dtype == dtype
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=rtol, atol=atol)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=rtol, atol=atol)
    strided = torch.randn(rows, 128, generator=g).to(dtype)[:, ::2]  # not contiguous
    torch.testing.assert_close(linear(strided, w), F.linear(strided, w), rtol=rtol, atol=atol)


def test_weights_without_a_packed_copy_and_other_dtypes_go_to_the_fallback() -> None:
    w, other = torch.randn(8, 16), torch.randn(8, 16)
    seen: list[torch.dtype] = []

    def fallback(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        seen.append(x.dtype)
        return F.linear(x, weight, bias)

    linear = onednn.PackedLinear({id(w): onednn.pack(w)}, fallback)
    linear(torch.randn(2, 16), w)
    linear(torch.randn(2, 16), other)
    linear(torch.randn(2, 16).double(), w.double())
    assert seen == [torch.float32, torch.float64]


def test_packable_is_what_packing_does_here() -> None:
    """bfloat16 packing needs CPU features some x86 CPUs lack (AVX2-only ones): the check
    agrees with an attempt, and float16 is never packed."""
    try:
        onednn.pack(torch.zeros(32, 32, dtype=torch.bfloat16))
        packs = True
    except RuntimeError:
        packs = False
    assert onednn.packable(torch.bfloat16) is packs
    assert onednn.packable(torch.float16) is False
