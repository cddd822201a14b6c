"""When each request is released, as offsets in seconds from the start of a step.

Gaps between requests are gamma-distributed with shape `burstiness` and mean 1/rate: shape
1 is a Poisson process (exponential gaps), below 1 burstier, above 1 more regular. An
infinite rate releases everything at once (a concurrency cap then does the pacing).
"""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    if n == 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    gaps[0] = 0.0  # the first request goes at once: a step does not start with idle time
    return [float(x) for x in np.cumsum(gaps)]
