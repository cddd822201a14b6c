"""The bfloat16 panel GEMM (torch.ops.tandem.bf16_panel_linear, engine/model/panels.py)
against torch's float32 GEMM over the same bfloat16 values."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import cpu
from engine.model import panels
from engine.model.panels import PanelLinear, choose_panel_rows

pytestmark = pytest.mark.skipif(
    not cpu.bf16_panels(), reason="the panel GEMM needs AVX-512 BF16, which this CPU lacks"
)


def integers(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Small integers: every product and sum is exact in float32, so the kernel's result
    must be the exact sum rounded once to bfloat16, whatever the order of its sums."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (rows, cols), generator=g).to(torch.bfloat16)


def test_pack_lays_each_panel_out_as_k_pairs_of_its_rows() -> None:
    n, k = 64, 6  # a full panel of 48 rows and one of 16
    w = torch.arange(n * k, dtype=torch.float32).reshape(n, k).to(torch.bfloat16)
    flat = panels.pack(w).flatten()
    assert panels.pack(w).shape == w.shape
    for n0, width in ((0, 48), (48, 16)):
        for kk in range(k):
            for j in range(width):
                at = n0 * k + ((kk // 2) * width + j) * 2 + kk % 2
                assert flat[at] == w[n0 + j, kk]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 16, 31, 32, 33, 64])
@pytest.mark.parametrize("out_features", [16, 32, 48, 80, 144, 960])
def test_matches_the_exact_sum_rounded_once(rows: int, out_features: int, prefetch: bool) -> None:
    # every tile height (8 and each remainder), every panel width (48, 32, 16), and more
    # panels than threads; with the next panel prefetched by hand and without
    k = 576
    x, w = integers(rows, k, rows), integers(out_features, k, out_features)
    got = panels.linear(x, panels.pack(w), prefetch)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    assert torch.equal(got, (x.float() @ w.float().T).to(torch.bfloat16))


def test_random_values_agree_with_torch_within_rounding() -> None:
    x = torch.randn(32, 1536).to(torch.bfloat16)
    w = (torch.randn(576, 1536) * 0.05).to(torch.bfloat16)
    got = torch.ops.tandem.bf16_panel_linear(x, panels.pack(w))
    torch.testing.assert_close(got, F.linear(x.float(), w.float()).to(torch.bfloat16))


def test_bad_inputs_are_refused_with_a_reason() -> None:
    w = torch.zeros(32, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="rows in multiples of 16"):
        panels.pack(torch.zeros(40, 64, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="even row length"):
        panels.pack(torch.zeros(32, 63, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="bfloat16 CPU weight"):
        panels.pack(torch.zeros(32, 64))
    with pytest.raises(RuntimeError, match=r"expects x \[M, 64\] bfloat16"):
        torch.ops.tandem.bf16_panel_linear(torch.zeros(2, 32, dtype=torch.bfloat16), panels.pack(w))
    with pytest.raises(RuntimeError, match=r"expects x \[M, 64\] bfloat16"):
        torch.ops.tandem.bf16_panel_linear(torch.zeros(2, 64), panels.pack(w))
    assert not panels.eligible(torch.zeros(40, 64, dtype=torch.bfloat16))
    assert not panels.eligible(torch.zeros(32, 64))
    assert panels.eligible(w)


def test_panel_linear_routes_by_rows_weight_and_dtype_and_adds_the_bias() -> None:
    w, other = integers(48, 64, 1), integers(48, 64, 2)
    fell_back: list[tuple[int, torch.dtype]] = []

    def fallback(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        fell_back.append((x.shape[0], x.dtype))
        return F.linear(x, wt.to(x.dtype), None if b is None else b.to(x.dtype))

    linear = PanelLinear({id(w): panels.pack(w)}, max_rows=4, fallback=fallback, prefetch=False)
    x, bias = integers(4, 64, 3), integers(1, 48, 4)[0]
    want = (x.float() @ w.float().T).to(torch.bfloat16) + bias
    assert torch.equal(linear(x, w, bias), want)
    linear(integers(5, 64, 5), w)  # more rows than measured to pay off
    linear(x, other)  # a weight without panels
    linear(x.float(), w)  # float32 activations
    assert fell_back == [(5, torch.bfloat16), (4, torch.bfloat16), (4, torch.float32)]


def test_choose_panel_rows_takes_the_rows_where_the_panels_win() -> None:
    w = integers(48, 64, 6)
    pairs = [(w, panels.pack(w))]

    def slow(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)  # far slower than a 48 x 64 GEMM of any probed height
        return F.linear(x, wt)

    def free(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        return x  # no work at all: nothing beats it

    assert choose_panel_rows(pairs, slow, True, reps=1) == 1024
    assert choose_panel_rows(pairs, free, True, reps=1) == 0

    def free_at(lost: set[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, wt: free(x, wt) if x.shape[0] in lost else slow(x, wt)

    # one probe lost (to a busy neighbour, say) does not cut off the counts after it
    assert choose_panel_rows(pairs, free_at({16}), True, reps=1) == 1024
    # where they lose from some count on, they serve up to the last that gains
    assert choose_panel_rows(pairs, free_at({64, 128, 256, 512, 1024}), True, reps=1) == 32


def test_choose_gives_the_rows_measured_with_the_prefetch_it_chose() -> None:
    w = integers(48, 64, 7)

    def slow(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return F.linear(x, wt)

    rows, prefetch = panels.choose([(w, panels.pack(w))], slow)
    assert rows == 1024 and isinstance(prefetch, bool)
