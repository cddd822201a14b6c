"""Summary statistics of latencies. Percentiles interpolate linearly between the two nearest
ranks (numpy's default, which vLLM reports); std is the population's (numpy's ddof=0); an
empty list gives zeros, as vLLM reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stats:
    """In milliseconds."""

    mean: float = 0.0
    median: float = 0.0
    std: float = 0.0
    p90: float = 0.0
    p99: float = 0.0

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Stats:
        if not values:
            return cls()
        ms = sorted(v * 1000.0 for v in values)
        mean = math.fsum(ms) / len(ms)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in ms) / len(ms))
        return cls(mean, _at(ms, 50), std, _at(ms, 90), _at(ms, 99))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100): rank q/100 * (n - 1), linear between its neighbours."""
    if not values:
        raise ValueError("percentile of nothing")
    return _at(sorted(values), q)


def _at(ordered: Sequence[float], q: float) -> float:
    rank = q / 100.0 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
