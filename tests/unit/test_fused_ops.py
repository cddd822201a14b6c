"""Our fused C++ elementwise ops (NativeOps: torch.ops.tandem.*) against Hugging Face's
arithmetic op by op (TorchOps), in float32 and bfloat16, at a decode step's row counts and
a prefill chunk's. They round where HF rounds, so in bfloat16 nearly every element is
bit-equal; the exponential's last float32 bit (our vectorised exp against torch's) may
move an intermediate across a rounding boundary, rarely: one bfloat16 step there, at most
two in the result (silu's rounded value times `up`, rounded again)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from engine.kernels import cpu
from engine.model.ops import NativeOps, TorchOps

HIDDEN, INTER, HEADS, KV_HEADS, DIM = 96, 160, 6, 2, 32


@pytest.fixture(scope="module", autouse=True)
def kernels() -> Iterator[None]:
    assert cpu.load(), "the C++ CPU kernels failed to build here"
    yield


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        return
    # two bfloat16 steps (a step is 2^-7 of the value's power of two: 7 stored bits)
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-6, atol=1e-6)
    exact = (got == want).float().mean().item()
    assert exact >= 0.99, f"only {exact:.2%} of the elements are bit-equal"


def _both(fn: Callable[[TorchOps], object]) -> tuple[object, object]:
    return fn(NativeOps()), fn(TorchOps())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 256])
def test_add_rms_norm(dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x, delta = (torch.randn(rows, HIDDEN, generator=g).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(HIDDEN, generator=g)).to(dtype)
    (s, n), (s_ref, n_ref) = _both(lambda ops: ops.add_rms_norm(x, delta, w, 1e-5))
    _same(s, s_ref)
    _same(n, n_ref)
    _same(NativeOps().rms_norm(x, w, 1e-5), TorchOps().rms_norm(x, w, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 256])
def test_rope(dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    qkv = torch.randn(rows, (HEADS + 2 * KV_HEADS) * DIM, generator=g).to(dtype)
    q = qkv[:, : HEADS * DIM].view(rows, HEADS, DIM)  # strided views, as the model has
    k = qkv[:, HEADS * DIM : (HEADS + KV_HEADS) * DIM].view(rows, KV_HEADS, DIM)
    angles = torch.rand(rows, DIM // 2, generator=g) * 100
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(dtype)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(dtype)
    (q2, k2), (q_ref, k_ref) = _both(lambda ops: ops.rope(q, k, cos, sin))
    _same(q2, q_ref)
    _same(k2, k_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 256])
def test_silu_and_mul(dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    gate_up = (3 * torch.randn(rows, 2 * INTER, generator=g)).to(dtype)
    got, want = _both(lambda ops: ops.silu_and_mul(gate_up))
    _same(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_at_the_exponential_edges(dtype: torch.dtype) -> None:
    """Gates far past where exp(-gate) overflows or underflows float32: silu is ~gate
    there, or ~0 (HF's exactly 0 from gate / inf; ours ~1e-35 from a capped exponential),
    never inf or NaN (the float32 loop gave NaN below -88.7 before the cap)."""
    gate = torch.tensor([-1e4, -500.0, -90.0, -88.5, 0.0, 88.5, 90.0, 500.0, 1e4] * 4)
    up = torch.linspace(-2, 2, gate.numel())
    gate_up = torch.cat((gate, up)).unsqueeze(0).to(dtype)
    got, want = _both(lambda ops: ops.silu_and_mul(gate_up))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-6, atol=1e-6)
