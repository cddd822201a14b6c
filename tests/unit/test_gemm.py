"""UpcastLinear: bfloat16 GEMMs through float32 copies of the weights from a row count on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.gemm import UpcastLinear, choose_upcast_rows


def test_wide_gemms_run_on_float32_copies_and_round_back() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=gen).bfloat16()
    b = torch.randn(48, generator=gen).bfloat16()
    linear = UpcastLinear(upcast_rows=4)
    narrow = torch.randn(3, 32, generator=gen).bfloat16()
    wide = torch.randn(5, 32, generator=gen).bfloat16()
    assert torch.equal(linear(narrow, w, b), F.linear(narrow, w, b))  # bfloat16 as is
    got = linear(wide, w, b)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, F.linear(wide.float(), w.float(), b.float()).bfloat16())
    # bfloat16 -> float32 is exact: a native bfloat16 GEMM differs by summation order only
    assert torch.allclose(got.float(), F.linear(wide, w, b).float(), rtol=1e-2, atol=1e-2)
    copy = next(iter(linear._fp32.values()))
    linear(wide, w, b)
    assert len(linear._fp32) == 1 and next(iter(linear._fp32.values())) is copy  # made once


def test_no_upcast_for_float32_models() -> None:
    assert choose_upcast_rows(torch.randn(64, 32)) is None


def test_no_probe_where_the_cpu_has_bf16_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe run beside a busy neighbour must not send a bfloat16 CPU's GEMMs to float32:
    with native bfloat16 nothing is timed at all."""
    timed: list[int] = []

    def upcast_wins(fns: list[object], reps: int) -> list[float]:
        timed.append(reps)
        return [1.0, 0.0]  # bfloat16, float32: float32 far faster

    monkeypatch.setattr("engine.model.gemm.fastest", upcast_wins)
    weight = torch.randn(64, 32).to(torch.bfloat16)
    monkeypatch.setattr("engine.model.gemm.has_bf16_arithmetic", lambda: True)
    assert choose_upcast_rows(weight) is None and not timed
    monkeypatch.setattr("engine.model.gemm.has_bf16_arithmetic", lambda: False)
    assert choose_upcast_rows(weight) == 1 and timed  # float32 "faster": it is measured
