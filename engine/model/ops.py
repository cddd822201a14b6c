"""The decoder layer's elementwise ops, in two implementations with the same arithmetic:

- `TorchOps`: Hugging Face's reference, op by op (any device, any dtype);
- `NativeOps`: our fused C++ kernels, torch.ops.tandem.* (CPU, float32 and bfloat16),
  one pass each instead of 5-10 eager ops and their temporaries.

The model picks one at start-up (engine/runner.py), never per call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x: [N, heads, D]; cos/sin: [N, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class TorchOps:
    name = "torch"

    def __init__(self) -> None:
        # F.linear, or engine.model.gemm.UpcastLinear on CPUs slow at bfloat16 GEMMs
        self.linear: Callable[..., torch.Tensor] = F.linear

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, rms_norm(x + delta)): the residual add and the next norm."""
        if delta is not None:
            x = x + delta
        return x, rms_norm(x, weight, eps)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def rope(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rotate(q, cos, sin), rotate(k, cos, sin)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class NativeOps(TorchOps):
    """Needs engine.kernels.cpu.load() to have succeeded."""

    name = "native"

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s, n = torch.ops.tandem.add_rms_norm(x, delta, weight, eps)
        return s, n

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.ops.tandem.add_rms_norm(x, None, weight, eps)[1]

    def rope(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q2, k2 = torch.ops.tandem.rope(q, k, cos, sin)
        return q2, k2

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.tandem.silu_and_mul(gate_up)
        return out
