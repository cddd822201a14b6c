"""bfloat16 GEMMs on CPUs without bfloat16 arithmetic (no AVX512_BF16 / AMX).

There, a bfloat16 GEMM runs through conversions and is several times slower than float32
once it has more than a few rows, while at one or two rows (a small decode batch) it is
memory-bound and bfloat16 weights, half the bytes, win. `UpcastLinear` keeps both: the
bfloat16 weights for GEMMs with few rows, and a float32 copy of each weight for the rest,
where activations go up to float32 and the result comes back to bfloat16.

That is exact where it matters: bfloat16 -> float32 is lossless, so the products are the
ones a native bfloat16 GEMM with float32 accumulation computes (only the order of the
sums differs), and the output is rounded to bfloat16 as it would be there.

`choose_upcast_rows` measures at start-up where the float32 path starts to win; None
means never (the model is not bfloat16, or the CPU has bfloat16 arithmetic: there nothing
is measured, since a start-up beside a busy neighbour once measured float32 faster at one
row on an EPYC with AVX512_BF16 and ran every GEMM 2.5x slower until restarted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model.probe import fastest

_PROBE_ROWS = (1, 2, 4, 8, 16, 32)


class UpcastLinear:
    def __init__(self, upcast_rows: int) -> None:
        self.upcast_rows = upcast_rows
        self._fp32: dict[int, torch.Tensor] = {}  # weight's data_ptr -> its float32 copy

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.shape[0] < self.upcast_rows:
            return F.linear(x, weight, bias)
        w32 = self._fp32.get(weight.data_ptr())
        if w32 is None:  # the copy is made once per weight, on its first wide GEMM
            w32 = self._fp32[weight.data_ptr()] = weight.float()
        b32 = None if bias is None else bias.float()
        return F.linear(x.float(), w32, b32).to(x.dtype)


def has_bf16_arithmetic() -> bool:
    """AVX512_BF16 or AMX: bfloat16 GEMMs run natively (torch's own CPU checks)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_upcast_rows(weight: torch.Tensor, reps: int = 5) -> int | None:
    """The fewest rows at which the float32 path beats bfloat16 by 25% on `weight`'s shape
    (the model's widest GEMM), or None when it never does (checked up to 32 rows)."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or has_bf16_arithmetic():
        return None
    w32 = weight.float()
    for rows in _PROBE_ROWS:
        x = torch.randn(rows, weight.shape[1]).to(torch.bfloat16)
        native, upcast = fastest(
            [
                lambda: F.linear(x, weight),  # noqa: B023
                lambda: F.linear(x.float(), w32).to(torch.bfloat16),  # noqa: B023
            ],
            reps,
        )
        if upcast * 1.25 < native:
            return rows
    return None
