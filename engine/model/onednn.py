"""float32 and bfloat16 GEMMs through oneDNN with weights packed once, on CPU.

torch's F.linear runs float32 GEMMs through MKL; oneDNN (which torch also ships, and which
vLLM's CPU build uses) runs them on weights reordered once into its blocked layout. On a
2-core AMD EPYC (AVX2) that measured 2.1x faster at 32 rows, 1.4x at 256 and 1.3x at
1,024 over the model's float32 shapes; in bfloat16 on a 2-core EPYC with avx512_bf16,
1.4-1.75x at 32 rows and 1.1-1.2x at 256 (F.linear there reaches oneDNN unpacked).
`PackedLinear` keeps the packed copy of each weight (one more copy of the weights in
memory) and sends GEMMs in the weight's own dtype to it; `packs_faster` measures at
start-up whether it wins here at all, at a decode batch's rows and a prefill chunk's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from engine.model.probe import fastest

Linear = Callable[..., torch.Tensor]
# a decode batch's rows and a prefill chunk's: the two kinds of step a server runs
_PROBE_ROWS = (32, 256)


@functools.cache
def packable(dtype: torch.dtype) -> bool:
    """oneDNN packs weights of `dtype` on this CPU: float32 wherever torch has oneDNN;
    bfloat16 only where the CPU has what oneDNN's bfloat16 path needs (AVX-512 BW/VL/DQ
    or AVX-NE-CONVERT): on an AVX2-only CPU it refuses with a RuntimeError."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        pack(torch.zeros(16, 16, dtype=dtype))
    except RuntimeError:
        return False
    return True


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] (float32 or bfloat16) in oneDNN's layout for any number of rows."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight)
    return packed


class PackedLinear:
    """ops.linear for a float32 or bfloat16 CPU model: GEMMs on weights with a packed copy,
    with an input of the weight's dtype, go to oneDNN; all others to `fallback`."""

    def __init__(self, packed: Mapping[int, torch.Tensor], fallback: Linear) -> None:
        self.packed = dict(packed)  # a weight's id() -> its packed copy
        self.fallback = fallback

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        p = self.packed.get(id(weight))
        # A compiled graph (engine/compiled.py) takes the plain GEMM: inductor lowers
        # oneDNN's linear only on weights it packed itself, and packs this one (freezing).
        if p is None or x.dtype != weight.dtype or torch.compiler.is_compiling():
            return self.fallback(x, weight, bias)
        y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), p, bias, "none", [None], ""
        )
        return y


def packs_faster(weights: Iterable[torch.Tensor], reps: int = 3) -> bool:
    """Whether oneDNN on packed copies beats F.linear over `weights` (several layers', so
    each GEMM finds its weight out of cache, as in a step), interleaved, best of `reps`,
    by the geometric mean of its speed-ups at each probed row count. Both kinds of step
    count alike: probed at 256 rows alone, the answer was a coin toss on a 2-core EPYC
    with avx512_bf16 (0.97-1.08x), and a toss lost cost decode steps 1.3x at 32 rows."""
    pairs = [(w, pack(w)) for w in weights]
    linear = PackedLinear({id(w): p for w, p in pairs}, F.linear)
    gain = 1.0
    for rows in _PROBE_ROWS:
        gain *= _speedup(linear, pairs, rows, reps)
    return gain > 1.0


def _speedup(
    linear: PackedLinear, pairs: list[tuple[torch.Tensor, torch.Tensor]], rows: int, reps: int
) -> float:
    """F.linear's time over the packed GEMMs' at `rows` rows."""
    x = torch.randn(rows, pairs[0][0].shape[1]).to(pairs[0][0].dtype)
    packed, plain = fastest(
        [lambda: [linear(x, w) for w, _ in pairs], lambda: [F.linear(x, w) for w, _ in pairs]],
        reps,
    )
    return plain / packed
