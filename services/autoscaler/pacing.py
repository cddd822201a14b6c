"""When a pool's size follows what the sizing asks for: up fast, down slow, never flapping.

Each tick the sizing gives two needs per pool: `up` at the targets and `down` at targets
eased by the hysteresis margin (a smaller pool must be comfortably enough, not just enough).

    scale up    to the least `up` need of the panic window (a need that held for it, not
                one reading), at most x max_up_factor or + max_up_step a step (whichever
                is more, as the Kubernetes HPA's default: x2 or +4), once per up cooldown
    scale down  to the greatest `down` need of the stable window (every reading in it
                agreed; each the larger of the load of now and what the window's arrivals
                bring for a long request's lifetime, forecast.py: requests that outlive the
                window are in both), at most max_down_step a step, once per down cooldown;
                a window of no load at all goes to the floor in one step
    wake        a pool at zero that requests wait for (held by the router): one worker,
                at once
    hold        otherwise; while the pool has not been watched for a whole stable window
                (a restarted autoscaler does not shrink what it just met); while
                workers it asked for are starting (the figures do not show them yet);
                and from shrinking while another pool's workers are starting

As Knative's stable and panic windows and the Kubernetes HPA's stabilization windows, with
one difference: the windows hold needs computed from learned speeds and latency targets,
not a utilization ratio.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from services.autoscaler.sizing import Bounds


@dataclass(frozen=True, slots=True)
class Pacing:
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    up_cooldown_s: float = 15.0
    down_cooldown_s: float = 120.0
    max_up_factor: float = 2.0
    max_up_step: int = 4  # workers a step may add whatever the factor allows (a small pool)
    max_down_step: int = 1
    hysteresis: float = 0.1  # how much tighter the targets a smaller pool must meet

    def __post_init__(self) -> None:
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic window <= stable window")
        if min(self.up_cooldown_s, self.down_cooldown_s) < 0 or self.max_down_step < 1:
            raise ValueError("cooldowns must be >= 0 and the down step >= 1")
        if self.max_up_step < 1:
            raise ValueError("the up step must be >= 1")
        if self.max_up_factor < 1 or not 0 <= self.hysteresis < 1:
            raise ValueError("need max_up_factor >= 1 and 0 <= hysteresis < 1")


@dataclass(frozen=True, slots=True)
class Step:
    desired: int
    reason: str

    @property
    def direction(self) -> str:
        return self.reason.split(":", 1)[0]  # up | down | hold | bounds


@dataclass(frozen=True, slots=True)
class _Need:
    at: float
    up: int
    down: int
    idle: bool


class PoolPacer:
    def __init__(self, bounds: Bounds, pacing: Pacing, now: float) -> None:
        self.bounds, self.pacing = bounds, pacing
        self._needs: deque[_Need] = deque()
        self._watched_since = now
        self._last_up = self._last_down = -math.inf

    def step(
        self,
        now: float,
        current: int,
        up: int,
        down: int,
        idle: bool,
        starting: int = 0,
        others_starting: bool = False,
    ) -> Step:
        """What to do with a pool of `current` workers, given this tick's needs. While
        `starting` of them are not serving yet, the figures do not show them: hold. While
        another pool's workers are starting (`others_starting`), grow but never shrink:
        the sizing counts them as serving, and this pool does their work until they are
        (the decode pool prefills while the prefill pool comes back from zero)."""
        stable_s = self.pacing.stable_window_s
        self._remember(_Need(now, up, down, idle))
        if starting > 0:
            return Step(current, f"hold: {starting} worker(s) starting")
        outside = self.bounded(current)
        if outside is not None:
            return outside
        b = self.bounds
        wanted_up = min(n.up for n in self._within(now, self.pacing.panic_window_s))
        if wanted_up > current:
            if self._needs[0].at > now - self.pacing.panic_window_s:
                return Step(current, f"hold: {wanted_up} needed for less than the panic window")
            return self._up(now, current, wanted_up)
        if now - self._watched_since < stable_s:
            return Step(current, "hold: not watched for a whole stable window yet")
        if others_starting:
            return Step(current, "hold: another pool's workers are starting")
        if all(n.idle for n in self._within(now, stable_s)) and current > b.min:
            return self._down(now, current, b.min, "no load for a whole stable window")
        wanted_down = max(n.down for n in self._within(now, stable_s))
        if wanted_down < current:
            step = min(current - wanted_down, self.pacing.max_down_step)
            why = f"{wanted_down} enough for the stable window"
            return self._down(now, current, current - step, why)
        return Step(current, f"hold: {current} needed")

    def wake(self, now: float, current: int, held: int) -> Step | None:
        """A pool at zero with `held` requests waiting for it starts one worker at once:
        no window, no cooldown (a held request waits for the start whatever we do)."""
        if current > 0 or held <= 0 or self.bounds.max == 0:
            return None
        self._last_up = now
        return Step(1, f"up: {held} request(s) held with no worker to serve them")

    def bounded(self, current: int) -> Step | None:
        """The step into the bounds of a size outside them (set by hand), or None."""
        b = self.bounds
        if b.min <= current <= b.max:
            return None
        clamped = min(max(current, b.min), b.max)
        return Step(clamped, f"bounds: {current} is outside {b.min}..{b.max}")

    def _up(self, now: float, current: int, wanted: int) -> Step:
        p = self.pacing
        if now - self._last_up < p.up_cooldown_s:
            return Step(current, f"hold: {wanted} needed, up cooldown")
        most = max(current + p.max_up_step, math.floor(current * p.max_up_factor))
        desired = min(wanted, most, self.bounds.max)
        if desired <= current:
            return Step(current, f"hold: {wanted} needed, {current} is the max")
        self._last_up = now
        return Step(desired, f"up: {wanted} needed over the panic window")

    def _down(self, now: float, current: int, desired: int, why: str) -> Step:
        if now - max(self._last_down, self._last_up) < self.pacing.down_cooldown_s:
            return Step(current, f"hold: {why}, down cooldown")
        self._last_down = now
        return Step(desired, f"down: {why}")

    def _remember(self, need: _Need) -> None:
        """Keep the needs of the last stable window (the panic window is inside it)."""
        self._needs.append(need)
        while self._needs[0].at < need.at - self.pacing.stable_window_s:
            self._needs.popleft()

    def _within(self, now: float, window_s: float) -> list[_Need]:
        return [n for n in self._needs if n.at >= now - window_s]
