"""One tick's sizing of both pools, and the figures it exports: the load of now and the
forecast from the arrival rate (forecast.py), at the targets (what growing is measured
against) and at the eased targets (what shrinking is)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Gauge

from services.autoscaler.arrival_rate import Rates
from services.autoscaler.capacity import Capacity
from services.autoscaler.forecast import Forecast, arriving, describe, forecast, sized
from services.autoscaler.sizing import Bounds, Demand, Sizing, Targets


@dataclass(frozen=True, slots=True)
class Needs:
    demand: Demand
    up: Sizing | None  # at the targets; None while the speeds it needs are not measured
    down: Sizing | None  # at the eased targets
    panic_rate: Rates | None  # what arrives a second over the panic window; None: no figures
    stable_rate: Rates | None  # ... over the stable window
    ahead: Forecast | None  # what the panic window's rate brings (what `up` weighed)
    # how long a long request lives, as the stable window's arrivals say (forecast.arriving):
    # what shrinking weighed (for the log and the metrics)
    lifetime_s: float = 0.0
    # what `up` weighed: the panic window's rates as far as its count is sure of
    up_rate: Rates | None = None

    @property
    def idle(self) -> bool:
        """Nothing in flight, held or arriving: a window of these goes to the floor."""
        return self.demand.idle and self.ahead is None

    @property
    def inputs(self) -> str:
        """The figures the sizing saw, for the decision's log line."""
        arrivals = describe(self.panic_rate, self.stable_rate, self.ahead, self.up_rate)
        arrivals += f"; a long request lives {self.lifetime_s:.1f} s"
        return f"{self.up.reason}; {arrivals}" if self.up else arrivals


def size_pools(
    need: Demand,
    rates: tuple[Rates | None, Rates | None],
    cap: Capacity,
    targets: Targets,
    eased: Targets,
    bounds: Mapping[str, Bounds],
) -> Needs:
    """`rates`: what arrives a second over the panic and the stable window. Up weighs the panic
    window's (a step is met within seconds) as far as its count is sure of, and never
    less than the stable window's (a chance burst in a short window would grow a pool
    for seconds), down the stable window's (a lull of seconds does not shrink what the
    minute before needed)."""
    panic, stable = rates
    sure = panic.at_least(stable) if panic is not None else None
    need_up, need_down = arriving(need, sure, targets), arriving(need, stable, targets)
    ahead_up, ahead_down = forecast(need_up, sure), forecast(need_down, stable)
    up = sized(need_up, ahead_up, cap, targets, bounds)
    down = sized(need_down, ahead_down, cap, eased, bounds)
    return Needs(need, up, down, panic, stable, ahead_up, need_down.lifetime_s, sure)


def export(signal: Gauge, needs: Needs, cap: Capacity) -> None:
    """`signal`: AutoscalerMetrics.signal, by name."""
    d, up, ahead = needs.demand, needs.up, needs.ahead
    s = signal
    s.labels("held_requests").set(d.held)
    s.labels("prefill_tok_s").set(d.prefill_tok_s)
    s.labels("requests").set(d.requests)
    s.labels("used_blocks").set(d.used_blocks)
    s.labels("tail_blocks").set(d.tail_blocks)
    s.labels("worker_prefill_tok_s").set(cap.prefill_tok_s or math.nan)
    s.labels("predicted_itl_s").set(up.itl_s if up and up.itl_s is not None else math.nan)
    s.labels("arrival_rate_panic").set(_requests(needs.panic_rate))
    s.labels("arrival_rate_stable").set(_requests(needs.stable_rate))
    s.labels("forecast_requests").set(ahead.requests if ahead else 0)
    asked = needs.panic_rate.asked_output if needs.panic_rate else None
    s.labels("arrival_asked_output_tokens").set(math.nan if asked is None else asked)
    s.labels("request_lifetime_s").set(needs.lifetime_s)
    local = needs.stable_rate.local_share if needs.stable_rate else math.nan
    s.labels("arrival_local_prompt_share").set(local)
    s.labels("forecast_prefill_tok_s").set(ahead.prefill_tok_s if ahead else 0)


def _requests(rates: Rates | None) -> float:
    return math.nan if rates is None else rates.requests
