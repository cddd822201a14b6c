"""The decision loop: read the registry, learn, size both pools at once, pace, act.

    every interval_s:
      records ──read_pools──> loads, speeds ──Capacity.learn──┐
      routers' arrival counts ──ArrivalRate──> rates ─────────┴─> sizing (targets, and eased)
                                                      │          of now and of the forecast
                                                      │          (needs.py: the larger each)
      actuator.replicas() (what each pool is set to) ─┴─> PoolPacer.step per pool ──> scale()

What each pool is set to is read back from the actuator every tick, so a count changed by
hand is the new current size (and said so in the log). A scale-up whose workers are not in
the registry within `ready_timeout_s` is cancelled (the pool set back to what is serving)
and reported. A registry that cannot be read holds every pool as it is; arrival counts
that cannot be read only take the forecast away (forecast.py): sized as before it.
Requests that routers hold because the serving pool is at zero start its first worker at
once (PoolPacer.wake): the sizing needs speeds that an empty pool cannot show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from services.autoscaler.arrival_rate import ArrivalRate, Rates
from services.autoscaler.capacity import Capacity
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.needs import Needs, export, size_pools
from services.autoscaler.pacing import Pacing, PoolPacer, Step
from services.autoscaler.signals import Reading, read_pools, readings
from services.autoscaler.sizing import Bounds, Targets, demand
from services.pb.events_pb2 import WorkerRecord

if TYPE_CHECKING:  # for annotations only: the policy calls no network (.importlinter)
    from services.cluster.arrivals import ArrivalCount

DEFAULT_INTERVAL_S = 5.0
DEFAULT_READY_TIMEOUT_S = 300.0  # a model load on a fresh node, image pull aside
log = logging.getLogger(__name__)


class Actuator(Protocol):
    def replicas(self) -> dict[str, int]:
        """What each pool is set to now: by the autoscaler, or by hand since."""
        ...

    def scale(self, pool: str, replicas: int) -> None: ...


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    bounds: Mapping[str, Bounds]  # {prefill, decode} or {both}
    targets: Targets = field(default_factory=Targets)
    pacing: Pacing = field(default_factory=Pacing)
    interval_s: float = DEFAULT_INTERVAL_S
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    decode_prefills: bool = True  # sizing.Demand's: the routers' prefill balance

    def __post_init__(self) -> None:
        if set(self.bounds) not in ({"prefill", "decode"}, {"both"}):
            raise ValueError(f"pools are prefill and decode, or both; got {sorted(self.bounds)}")

    @property
    def serving(self) -> str:
        return "both" if "both" in self.bounds else "decode"


@dataclass(frozen=True, slots=True)
class Decision:
    pool: str
    current: int  # what the pool was set to
    ready: int  # its workers in the registry
    desired: int
    reason: str
    inputs: str = ""  # the figures the sizing saw

    @property
    def direction(self) -> str:
        return self.reason.split(":", 1)[0]


class Autoscaler:
    def __init__(
        self,
        config: AutoscalerConfig,
        read_records: Callable[[], list[WorkerRecord]],
        actuator: Actuator,
        metrics: AutoscalerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_held: Callable[[], int] = lambda: 0,
        read_arrivals: Callable[[], list[ArrivalCount]] = lambda: [],
    ) -> None:
        """`read_held()`: the requests routers hold while the serving pool has no worker
        (services/cluster/held_requests.py); `read_arrivals()`: each router's count of the
        requests that reached it (services/cluster/arrivals.py)."""
        self.config, self.actuator = config, actuator
        self.metrics = metrics or AutoscalerMetrics()
        self.capacity = Capacity()
        self._read, self._clock, self._read_held = read_records, clock, read_held
        self._read_arrivals = read_arrivals
        self.arrivals = ArrivalRate(keep_s=config.pacing.stable_window_s)
        now = clock()
        self._pacers = {p: PoolPacer(b, config.pacing, now) for p, b in config.bounds.items()}
        self._last: dict[str, Reading] = {}
        self._set: dict[str, int] = {}  # what we last set each pool to
        self._short_since: dict[str, float] = {}  # set above what is ready, since
        # how long its last start took, as the ticks saw it (up to an interval short)
        self._start_s: dict[str, float] = {}

    def tick(self) -> list[Decision]:
        now = self._clock()
        try:
            records, held = self._read(), self._read_held()
        except Exception as e:  # a Redis outage: decide nothing on stale or missing figures
            log.warning("autoscaler: the registry cannot be read (%s): holding every pool", e)
            return self._hold_all(f"hold: metrics unavailable ({type(e).__name__})")
        now_readings = readings(records)
        loads, obs, self._last = read_pools(self._last, now_readings)
        self.capacity.learn(obs)
        cfg = self.config
        eased = cfg.targets.eased(cfg.pacing.hysteresis)
        start_s = self._start_s.get(cfg.serving, 0.0)
        need = demand(loads, cfg.serving, cfg.targets, held, cfg.decode_prefills, start_s)
        rates = self._arrival_rates()
        needs = size_pools(need, rates, self.capacity, cfg.targets, eased, cfg.bounds)
        export(self.metrics.signal, needs, self.capacity)
        try:
            set_to = self.actuator.replicas()
        except Exception as e:  # the API server is away: nothing to decide against
            log.warning("autoscaler: the pools' sizes cannot be read (%s): holding", e)
            return []
        ready = {p: loads[p].workers if p in loads else 0 for p in cfg.bounds}
        # one sizing for both pools: it counts workers still starting as serving
        starting = {p for p in cfg.bounds if set_to[p] > ready[p]}
        return [
            self._decide(p, now, set_to[p], ready[p], needs, bool(starting - {p}))
            for p in cfg.bounds
        ]

    def _arrival_rates(self) -> tuple[Rates | None, Rates | None]:
        """What arrives a second over the panic and the stable window; None, None without
        figures."""
        try:
            self.arrivals.update(self._read_arrivals())
        except Exception as e:  # Redis away, or a count unreadable: sized as without them
            log.warning("autoscaler: arrival counts cannot be read (%s): no forecast", e)
            return None, None
        p = self.config.pacing
        return self.arrivals.per_s(p.panic_window_s), self.arrivals.per_s(p.stable_window_s)

    def _decide(
        self,
        pool: str,
        now: float,
        set_to: int,
        ready: int,
        needs: Needs,
        others_starting: bool = False,
    ) -> Decision:
        current = self._current(pool, set_to)
        if self._stuck(pool, now, current, ready):
            late = self.config.ready_timeout_s
            why = f"cancel: {current - ready} worker(s) not ready after {late:g} s"
            return self._act(Decision(pool, current, ready, ready, why))
        pacer = self._pacers[pool]
        held = needs.demand.held
        woken = pacer.wake(now, current, held) if pool == self.config.serving else None
        if woken is not None:  # no speed needed: the pool is empty and requests wait
            step = woken
        elif needs.up is None or needs.down is None:
            step = pacer.bounded(current) or Step(current, "hold: worker speeds not measured yet")
        else:
            starting = max(current - ready, 0)
            step = pacer.step(
                now,
                current,
                needs.up.replicas[pool],
                needs.down.replicas[pool],
                needs.idle,
                starting,
                others_starting,
            )
        done = self._act(Decision(pool, current, ready, step.desired, step.reason, needs.inputs))
        if done.desired > max(done.current, ready):  # a start begins: timed from now
            self._short_since.setdefault(pool, now)
        return done

    def _act(self, d: Decision) -> Decision:
        """Carry `d` out; an actuator that fails (refused, unreachable) makes it a hold."""
        if d.desired != d.current:
            try:
                self.actuator.scale(d.pool, d.desired)
            except Exception as e:
                log.error("autoscaler: scaling %s to %d failed: %s", d.pool, d.desired, e)
                failed = f"hold: scaling to {d.desired} failed ({type(e).__name__})"
                return self._done(replace(d, desired=d.current, reason=failed))
            self._set[d.pool] = d.desired
        return self._done(d)

    def _current(self, pool: str, current: int) -> int:
        was = self._set.get(pool)
        if was is not None and was != current:
            log.info("autoscaler: %s was set to %d by hand (we set %d): kept", pool, current, was)
        self._set[pool] = current
        return current

    def _stuck(self, pool: str, now: float, current: int, ready: int) -> bool:
        if ready >= current:
            since = self._short_since.pop(pool, None)
            if since is not None:  # the workers it waited for serve
                self._start_s[pool] = now - since
            return False
        since = self._short_since.setdefault(pool, now)
        if now - since < self.config.ready_timeout_s:
            return False
        del self._short_since[pool]
        return True

    def _hold_all(self, reason: str) -> list[Decision]:
        try:
            set_to = self.actuator.replicas()
        except Exception:  # the actuator is away too: as last set
            set_to = {p: self._set.get(p, -1) for p in self.config.bounds}
        return [
            self._done(Decision(p, set_to[p], -1, set_to[p], reason)) for p in self.config.bounds
        ]

    def _done(self, d: Decision) -> Decision:
        m = self.metrics
        m.decisions.labels(d.pool, d.direction).inc()
        m.desired.labels(d.pool).set(d.desired)
        if d.ready >= 0:
            m.ready.labels(d.pool).set(d.ready)
        level = logging.INFO if d.desired != d.current else logging.DEBUG
        log.log(
            level,
            "autoscaler: %s %d -> %d (ready %d): %s [%s]",
            d.pool,
            d.current,
            d.desired,
            d.ready,
            d.reason,
            d.inputs,
        )
        return d
