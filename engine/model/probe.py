"""Timing kernels against each other at start-up, where the engine picks GEMM paths by
measuring rather than guessing (engine/model/gemm.py, quant.py, onednn.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def fastest(fns: Sequence[Callable[[], object]], reps: int) -> list[float]:
    """Each function's best time in seconds over `reps` interleaved rounds after one
    warm-up call each: a busy neighbour slows all alike, not one."""
    for fn in fns:
        fn()
    took = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            took[i] = min(took[i], time.perf_counter() - start)
    return took
