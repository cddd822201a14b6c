"""bfloat16 GEMMs for a decode batch's rows through our panel kernel, on CPUs with AVX-512
BF16 (torch.ops.tandem.bf16_panel_linear, engine/kernels/csrc/bf16_panels.cpp).

At a decode batch's 16-32 rows oneDNN's bfloat16 GEMMs on packed weights run well below
this machine's bfloat16 peak; the panel kernel keeps an 8-row x 48-output tile's sums in
registers over the whole row and streams each weight once per 8 rows. Its products and
float32 sums are oneDNN's (the same instruction), only their order differs, and the output
is rounded to bfloat16 as oneDNN rounds it. Past some number of rows (a prefill chunk)
oneDNN's blocking may win: `choose_panel_rows` measures where at start-up, and
`PanelLinear` sends GEMMs of up to that many rows to the panels, the rest to the GEMM it
wraps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from engine.model.probe import fastest

Linear = Callable[..., torch.Tensor]
# up to a prefill chunk's rows (the step's default token budget, 1,024): without the hand
# prefetch the panels matched oneDNN there on a Zen 4 EPYC (435 against 425 GFLOP/s)
_PROBE_ROWS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def eligible(weight: torch.Tensor) -> bool:
    """A weight the kernel takes: 2-D bfloat16 on CPU, rows in 16s, an even row length."""
    return (
        weight.dim() == 2
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and weight.shape[0] % 16 == 0
        and weight.shape[1] % 2 == 0
    )


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] in the kernel's panel layout (same shape, one more copy)."""
    packed: torch.Tensor = torch.ops.tandem.pack_bf16_panels(weight)
    return packed


def linear(x: torch.Tensor, packed: torch.Tensor, prefetch: bool) -> torch.Tensor:
    """x @ w.T through the kernel, on `w`'s panels; `prefetch`: the next panel by hand."""
    y: torch.Tensor = torch.ops.tandem.bf16_panel_linear(x, packed, prefetch)
    return y


class PanelLinear:
    """ops.linear: GEMMs of up to `max_rows` bfloat16 rows on a weight with a packed copy go
    to the panel kernel (`prefetch` as `choose_prefetch` found); all others to `fallback`."""

    def __init__(
        self, packed: Mapping[int, torch.Tensor], max_rows: int, fallback: Linear, prefetch: bool
    ) -> None:
        self.packed = dict(packed)  # a weight's id() -> its panels
        self.max_rows = max_rows
        self.fallback = fallback
        self.prefetch = prefetch

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        p = self.packed.get(id(weight)) if x.shape[0] <= self.max_rows else None
        if p is None or x.dtype != torch.bfloat16 or x.dim() != 2:
            return self.fallback(x, weight, bias)
        y = linear(x, p, self.prefetch)
        return y if bias is None else y.add_(bias)


def choose_prefetch(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], reps: int = 3) -> bool:
    """Whether the kernel's hand prefetch of the next panel makes a decode batch's GEMMs
    (8 and 32 rows) faster here than the hardware's prefetchers alone, over `pairs`
    (weights and their panels, out of cache as in a step). The kernel was written with it
    on a Zen 5 EPYC; on a Zen 4 it made them 1.3-1.5x slower (docs/benchmarks.md)."""
    xs = {rows: {w.shape[1]: torch.randn(rows, w.shape[1]).to(torch.bfloat16) for w, _ in pairs}
          for rows in (8, 32)}  # fmt: skip

    def step(prefetch: bool) -> None:
        for by_k in xs.values():
            for w, p in pairs:
                linear(by_k[w.shape[1]], p, prefetch)

    with_it, without = fastest([lambda: step(True), lambda: step(False)], reps)
    return with_it < without


def choose(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], fallback: Linear
) -> tuple[int, bool]:
    """The rows up to which the panels serve and whether they prefetch by hand, measured
    over `pairs` against `fallback`: what PanelLinear takes."""
    prefetch = choose_prefetch(pairs)
    return choose_panel_rows(pairs, fallback, prefetch), prefetch


def choose_panel_rows(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    fallback: Linear,
    prefetch: bool,
    reps: int = 3,
) -> int:
    """The row count up to which the panels serve: of those probed, the one that gains the
    most summed over every probed count up to it (the log of each speed-up over `fallback`,
    clamped to [1/2, 2]), over `pairs` (weights and their panels, several layers' worth,
    so that each GEMM finds its weight out of cache as in a step); 0 if no count gains.
    Not the first count where they lose: a probe beside a busy neighbour loses at random,
    and stopping there once sent a decode batch of 32 to oneDNN (8 rows chosen)."""
    best, best_gain, gain = 0, 0.0, 0.0
    for rows in _PROBE_ROWS:
        xs = {w.shape[1]: torch.randn(rows, w.shape[1]).to(torch.bfloat16) for w, _ in pairs}
        ours, theirs = fastest(
            [
                lambda: [linear(xs[w.shape[1]], p, prefetch) for w, p in pairs],  # noqa: B023
                lambda: [fallback(xs[w.shape[1]], w) for w, _ in pairs],  # noqa: B023
            ],
            reps,
        )
        gain += math.log(min(2.0, max(0.5, theirs / ours)))
        if gain > best_gain:
            best, best_gain = rows, gain
    return best
