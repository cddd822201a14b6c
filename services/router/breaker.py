"""A circuit breaker per worker, as SGLang's router keeps one: a worker whose calls keep
failing stops getting new ones for a while, then gets a chance to show it recovered.

    closed     calls go through; THRESHOLD failures in a row  -> open
    open       no new calls for COOLDOWN_S                    -> half-open
    half-open  calls go through: a success closes it, a failure opens it again

Health checks (health_checks.py) catch a worker that is down or wedged; this catches one
that answers its health checks yet fails the work (a broken transfer path, a bad device).
Failures are the worker's (unavailable, timed out, cut short), never a refused request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

THRESHOLD = 3
COOLDOWN_S = 10.0


@dataclass(slots=True)
class Breaker:
    failures: int = 0  # in a row
    open_until: float = 0.0  # time.monotonic(); closed or half-open once past

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def record(self, ok: bool) -> str | None:
        """Count a call's outcome; "opened" or "closed" when that changes the state."""
        if ok:
            tripped = self.failures >= THRESHOLD
            self.failures, self.open_until = 0, 0.0
            return "closed" if tripped else None
        self.failures += 1
        # Calls sent before it opened may fail after: they do not keep it open longer.
        if self.failures >= THRESHOLD and self.allows():
            self.open_until = time.monotonic() + COOLDOWN_S
            return "opened"
        return None
