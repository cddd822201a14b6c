"""What one worker can do, learned online from what the workers showed (signals.py).

- Prefill: prompt tokens per busy second, an exponentially weighted mean over readings
  (of prefill workers once one has been seen computing: see `learn`).
- Decode: the time of a decode step against its batch, `step_s(b) = base + per_seq * b`,
  a least-squares line through the recent (mean batch, mean step) points of every worker.
  While the points cover one batch size only, the line goes through that point with half
  of the step fixed (`base = per_seq * b`): a step costs weight reads that do not grow with
  the batch, and per-sequence work that does; the split is a prior until two batch sizes
  have been seen.

Learned per cluster, not per pool: prefill and decode workers run the same model on the
same kind of machine (a pool of another speed shows it in its own points, and the most
recent points dominate).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from services.autoscaler.signals import Observations

EWMA_WEIGHT = 0.3  # of each new reading: ~3 readings to follow a change of speed
DECODE_POINTS = 64  # the latest (batch, step) points kept for the line
MIN_BATCH_SPREAD = 1.0  # batch sizes this far apart make a line worth fitting


@dataclass(frozen=True, slots=True)
class DecodeLine:
    base_s: float
    per_seq_s: float

    def step_s(self, batch: float) -> float:
        return self.base_s + self.per_seq_s * max(batch, 1.0)


class Capacity:
    def __init__(self) -> None:
        self.prefill_tok_s: float | None = None  # one worker, while busy
        self._from_prefill_pool = False
        self._points: deque[tuple[float, float]] = deque(maxlen=DECODE_POINTS)
        self.decode: DecodeLine | None = None

    def learn(self, obs: Observations) -> None:
        # A prefill worker's steps are all prompt; a decode worker's prompt steps carry its
        # decodes too, so they say a prompt is slower than it is: used until a prefill
        # worker has been seen computing.
        if "prefill" in obs.prefill_tok_s:
            self._from_prefill_pool = True
        for pool, rates in obs.prefill_tok_s.items():
            if self._from_prefill_pool and pool != "prefill":
                continue
            for rate in rates:
                old = self.prefill_tok_s
                self.prefill_tok_s = rate if old is None else old + EWMA_WEIGHT * (rate - old)
        for points in obs.decode_steps.values():
            self._points.extend(points)
        if self._points:
            self.decode = _fit(list(self._points))


def _fit(points: list[tuple[float, float]]) -> DecodeLine:
    n = len(points)
    mb = sum(b for b, _ in points) / n
    ms = sum(s for _, s in points) / n
    spread = max(b for b, _ in points) - min(b for b, _ in points)
    if spread >= MIN_BATCH_SPREAD:
        var = sum((b - mb) ** 2 for b, _ in points)
        slope = sum((b - mb) * (s - ms) for b, s in points) / var
        base = ms - slope * mb
        if slope > 0 and base >= 0:
            return DecodeLine(base, slope)
    # one batch size seen (or a line that says a bigger batch is faster: noise): the prior
    per_seq = ms / (2 * max(mb, 1.0))
    return DecodeLine(per_seq * max(mb, 1.0), per_seq)
