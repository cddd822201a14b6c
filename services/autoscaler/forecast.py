"""Demand forecast from the arrival rate: what the pools will carry once the requests now
arriving have filled them, so a load step is met when requests start arriving faster, not
once the queues have grown (requests in flight, queued prompt tokens lag the step by a
request's lifetime).

    λ  requests/s arriving, and their prompt tokens/s (arrival_rate.py): the panic
       window's for scale-up, as far as its count is sure of and never under the stable
       window's (Rates.at_least: a chance burst of arrivals is no step), the stable
       window's for scale-down (a lull of seconds does not shrink what a minute needed)
    decode    requests in flight  L = λ x lifetime   (Little's law; lifetime: the TTFT
              target, then a p90 answer at the ITL target, as sizing.Demand has it: the
              longer of the p90 of answers each worker finished lately and of what its
              running ones have output so far. That p90 is of minutes of history: after
              long answers give way to short ones it keeps the long ones' length, after
              short to long it shows them only as they run. So the mean max_tokens
              arriving bound it (an answer never outgrows its max_tokens), and where
              nearly every answer runs to its max_tokens, they are its length: `arriving`)
    prefill   prompt tokens/s arriving, as counted (against the pool's measured speed, as
              the sizing weighs all prompt work). Counted, not λ x the p90 prompt of
              finished requests: that p90 lags a change of prompt lengths by as long as
              the percentile's history (in bench-autoscale's ramp the prefill-heavy phase's
              768-token prompts kept the prefill pool at 2 through the next phase's 64).

Each pool is then the larger of what the load of now needs and what the forecast needs:
the forecast only ever adds (more of either pool never predicts a slower ITL), and no
arrivals, or no figures of them, leave the sizing as it was without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.autoscaler.arrival_rate import Rates
from services.autoscaler.capacity import Capacity
from services.autoscaler.sizing import Bounds, Demand, Sizing, Targets, size


@dataclass(frozen=True, slots=True)
class Forecast:
    requests: int  # in flight in the serving pool, once the rate has filled it
    prefill_tok_s: float  # prompt tokens/s to compute


# Answers that end at their max_tokens this often make the max_tokens arriving the forecast
# of their length (a workload of fixed-length answers); below, they only bound it.
AT_LIMIT = 0.9


def arriving(need: Demand, rates: Rates | None, targets: Targets) -> Demand:
    """`need` as what arrives says it: the prompt tokens arriving (as counted), the share
    of them the serving pool prefills itself (short prompts), and a lifetime no longer
    than the outputs the arrivals ask for allow (an answer is never longer than its
    max_tokens); where nearly every answer runs to its max_tokens, as long as they ask,
    longer too (the p90 of finished answers lags a change to longer ones by their whole
    length). Unchanged without figures."""
    if rates is None:
        return need
    lifetime = need.lifetime_s
    asked = rates.asked_output
    if asked is not None:
        by_asks = targets.ttft_s + asked * targets.itl_s
        lifetime = by_asks if need.answers_at_limit >= AT_LIMIT else min(lifetime, by_asks)
    return replace(
        need,
        arriving_tok_s=rates.prompt_tokens,
        lifetime_s=lifetime,
        local_share=rates.local_share,
    )


def forecast(need: Demand, rates: Rates | None) -> Forecast | None:
    """What `rates` bring, living as long as `need`'s requests; None when there is nothing
    to forecast from (no arrivals, or no figures of them)."""
    if rates is None or rates.requests <= 0:
        return None
    # ceil: a trickle of arrivals still needs a worker to serve it
    requests = math.ceil(rates.requests * need.lifetime_s)
    return Forecast(requests, rates.prompt_tokens)


def sized(
    need: Demand,
    ahead: Forecast | None,
    cap: Capacity,
    targets: Targets,
    bounds: Mapping[str, Bounds],
) -> Sizing | None:
    """Per pool, the larger of the sizings of `need` and of `ahead`. None as `size` is for
    `need` (speeds not measured yet): the forecast never sizes what today could not."""
    now = size(need, cap, targets, bounds)
    if now is None or ahead is None:
        return now
    later = size(_as_demand(need, ahead), cap, targets, bounds)
    if later is None:
        return now
    replicas = {p: max(n, later.replicas[p]) for p, n in now.replicas.items()}
    if replicas == now.replicas:
        return now
    wants = ", ".join(f"{p} {n}" for p, n in later.replicas.items())
    # itl_s: today's load at today's size; at the larger size it is no slower
    return Sizing(replicas, f"{now.reason}; the forecast needs {wants}", now.itl_s)


def describe(
    panic: Rates | None, stable: Rates | None, ahead: Forecast | None, sure: Rates | None = None
) -> str:
    """The arrival figures a decision saw, for its log line; `sure`: the panic window's
    rates as far as its count is sure of (Rates.at_least), where they differ."""
    if panic is None and stable is None:
        return "arrivals: no figures (no forecast)"
    weighed = ""
    if sure is not None and panic is not None and abs(sure.requests - panic.requests) >= 0.005:
        weighed = f", up weighs {_per_s(sure)}"
    rates = f"arrivals {_per_s(panic)} (panic window{weighed}), {_per_s(stable)} (stable window)"
    if ahead is None:
        return rates + ": no forecast"
    return (
        f"{rates}: forecast {ahead.requests} requests in flight, "
        f"{ahead.prefill_tok_s:.0f} prompt tokens/s"
    )


def _as_demand(need: Demand, ahead: Forecast) -> Demand:
    # KV blocks, batch slots and a long request's room are today's: the forecast is of
    # requests and prompt work; held requests are today's too (the wake path has them)
    return replace(
        need, prefill_tok_s=ahead.prefill_tok_s, backlog_tok_s=0.0, requests=ahead.requests, held=0
    )


def _per_s(rates: Rates | None) -> str:
    return "-" if rates is None else f"{rates.requests:.2f}/s"
