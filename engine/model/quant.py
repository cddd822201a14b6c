"""GEMMs straight from a GGUF file's quantized blocks, on CPU.

A GGUF model's linear weights come as Q4_1 (0.625 bytes a weight) or Q8_0 (1.06) blocks.
We dequantize them to the model's parameters, and for CPU models (float32 or bfloat16) also
keep the blocks: a decode step at small batch is bound by reading the weights, and our kernel
(torch.ops.tandem.quant_linear, engine/kernels/csrc/quant_linear.cpp) reads the blocks,
a sixth of float32's bytes, expanding them in registers. Its dequantized values are exactly
gguf-py's, so only the order of the sums differs from the float32 GEMM. A bfloat16 model
reading the blocks computes with the GGUF's values, not their bfloat16 roundings, as
transformers does for a GGUF (it keeps the weights quantized and computes in float32).

Past some number of rows the dense GEMM wins (oneDNN on packed float32 weights reuses each
weight across a prefill chunk's rows better than our panels do): `choose_quant_rows`
measures where, at start-up (here ~64-128 rows: a decode step's whole batch), and
`QuantLinear` sends each GEMM to the faster of the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from engine.model.probe import fastest

# ggml's type ids of the block formats our kernel reads, and their bytes per 32 weights
Q4_1, Q8_0 = 3, 8
BLOCK_BYTES = {Q4_1: 20, Q8_0: 34}
_PROBE_ROWS = (1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True, slots=True)
class QuantizedWeight:
    blocks: torch.Tensor  # uint8 [out_features, in_features / 32 * block bytes], row-major
    qtype: int  # Q4_1 or Q8_0

    @staticmethod
    def concat(parts: Sequence[QuantizedWeight | None]) -> QuantizedWeight | None:
        """The rows of `parts` stacked (as q|k|v and gate|up are), or None unless all are
        quantized alike."""
        first = parts[0]
        if first is None or any(p is None or p.qtype != first.qtype for p in parts):
            return None
        return QuantizedWeight(torch.cat([p.blocks for p in parts if p is not None]), first.qtype)


Linear = Callable[..., torch.Tensor]


def quant_matmul(
    x: torch.Tensor, q: QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ dequant(q).T (+ bias), in float32, returned in x's dtype (a bfloat16 model's
    activations go up to float32 and the result comes back rounded, as a bfloat16 GEMM
    with float32 accumulation would round it)."""
    y: torch.Tensor = torch.ops.tandem.quant_linear(x.float(), q.blocks, q.qtype)
    if bias is not None:
        y.add_(bias)
    return y.to(x.dtype)


class QuantLinear:
    """ops.linear for a model whose weights (some of them) have quantized blocks: GEMMs of
    up to `max_rows` rows on those weights read the blocks; all others go to `fallback`."""

    def __init__(
        self, weights: Mapping[int, QuantizedWeight], max_rows: int, fallback: Linear
    ) -> None:
        self.weights = dict(weights)  # a model weight's id() -> its blocks
        self.max_rows = max_rows
        self.fallback = fallback

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.weights.get(id(weight)) if x.shape[0] <= self.max_rows else None
        if q is None:
            return self.fallback(x, weight, bias)
        return quant_matmul(x, q, bias)


def choose_quant_rows(
    pairs: Sequence[tuple[torch.Tensor, QuantizedWeight]], fallback: Linear, reps: int = 2
) -> int:
    """The most rows (of those probed) at which the blocks beat `fallback` over `pairs` (a
    model weight and its blocks; one per layer, so that, as in a real step, each GEMM
    finds its weight out of cache: a weight in cache makes float32 look several times
    faster than it is). 0 if never."""
    best = 0
    weight = pairs[0][0]
    for rows in _PROBE_ROWS:
        x = torch.randn(rows, weight.shape[1]).to(weight.dtype)
        quant, dense = fastest(
            [
                lambda: [quant_matmul(x, q) for _, q in pairs],  # noqa: B023
                lambda: [fallback(x, w) for w, _ in pairs],  # noqa: B023
            ],
            reps,
        )
        if quant >= dense:
            break
        best = rows
    return best
