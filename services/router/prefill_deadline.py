"""How long a remote prefill may take before the router tries elsewhere: from the prompt
and the prefill pool's measured speed, not a fixed two minutes.

    deadline = FLOOR_S + SLACK x (the prompt's uncached tokens + the tokens queued ahead
                                  of it on that worker) / the pool's measured tokens/s

The speed is learned from the prefills that succeed (a moving average, so a slower pool or
a heavier load shows within a few requests). Until one has been measured, the deadline is
UNMEASURED_S: a cold worker's first prefill (start-up, a compile) must not count as hung.
`--prefill-timeout-s` fixes the deadline instead.
"""

from __future__ import annotations

FLOOR_S = 5.0  # scheduling, a step of other work, a slow wake-up: never less than this
SLACK = 4.0  # times the expected duration: a busy node is slower, a hung one never answers
UNMEASURED_S = 120.0
MIN_MEASURED_TOKENS = 32  # shorter prefills are mostly fixed costs: they say little of speed
_WEIGHT = 0.2  # of the newest measurement in the moving average


class PrefillDeadline:
    def __init__(self, fixed_s: float | None = None) -> None:
        if fixed_s is not None and fixed_s <= 0:
            raise ValueError(f"a fixed prefill timeout must be positive, got {fixed_s}")
        self.fixed_s = fixed_s
        self.tokens_per_s: float | None = None

    def observe(self, tokens: int, seconds: float) -> None:
        """A prefill of `tokens` (its own and those queued ahead) answered in `seconds`."""
        if tokens < MIN_MEASURED_TOKENS or seconds <= 0:
            return
        rate = tokens / seconds
        old = self.tokens_per_s
        self.tokens_per_s = rate if old is None else (1 - _WEIGHT) * old + _WEIGHT * rate

    def for_tokens(self, tokens: int) -> float:
        """Seconds a prefill of `tokens` (its own and those queued ahead) may take."""
        if self.fixed_s is not None:
            return self.fixed_s
        if self.tokens_per_s is None:
            return UNMEASURED_S
        return FLOOR_S + SLACK * tokens / self.tokens_per_s
