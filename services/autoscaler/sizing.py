"""How many workers each pool needs for the load of now: one decision for both pools.

The two pools are not independent: prompts the prefill pool cannot take in time are
prefilled by the decode workers (the router's prefill balance, and its local prefill of
short prompts), which then decode more slowly. So the sizing tries every (prefill, decode)
pair within the bounds and keeps the one with the fewest workers whose predicted latencies
meet the targets:

    demand   λ  = prompt tokens/s computed now (all pools) + backlog / TTFT target,
             of which a share s never reaches a prefill worker (short prompts: the
             routers count them arriving, services/router/local_prefill.always_local)
    prefill  p workers cover  min(λ(1-s), p · r · u)  r: tokens/s a worker, u: utilization
    decode   the rest, λ - p·r·u (λs at least), takes f = rest / (d · r) of each decode worker
             ITL  = step(requests / d) / (1 - f)      step(): the learned decode line
             need f <= u, ITL <= target, requests / d <= max_num_seqs,
                  (used KV blocks / d + a p90 request's) / blocks a worker <= the KV
                  target (a p90 request: prompt and output at their 90th percentiles)

A colocated cluster is the same with one pool of `both` workers. Ties go to the pair with
the lower predicted ITL. Beside the prefill workers chosen, the decode pool is then the
fewest workers that meet the targets with the backlog cleared over a decode worker's start
(as last timed) where that is longer than the TTFT target: a worker asked for now takes
none of a backlog gone before it serves. Nothing measured yet means nothing to size: the
pools hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.autoscaler.capacity import Capacity
from services.autoscaler.signals import PoolLoad


@dataclass(frozen=True, slots=True)
class Targets:
    ttft_s: float = 2.0  # the prefill backlog is to be gone within this
    itl_s: float = 0.1
    kv_usage: float = 0.8  # of each decode worker's blocks
    utilization: float = 0.8  # of a worker's time, prefill work included

    def __post_init__(self) -> None:
        if min(self.ttft_s, self.itl_s) <= 0:
            raise ValueError("the TTFT and ITL targets must be positive")
        if not (0 < self.kv_usage <= 1 and 0 < self.utilization <= 1):
            raise ValueError("the KV and utilization targets are fractions in (0, 1]")

    def eased(self, margin: float) -> Targets:
        """Targets `margin` tighter: what a smaller pool must meet to be chosen (hysteresis)."""
        k = 1.0 - margin
        return Targets(self.ttft_s * k, self.itl_s * k, self.kv_usage * k, self.utilization * k)


@dataclass(frozen=True, slots=True)
class Bounds:
    min: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"replica bounds need 0 <= min <= max, got {self.min}..{self.max}")


@dataclass(frozen=True, slots=True)
class Demand:
    prefill_tok_s: float  # λ
    requests: int  # in the decode (or colocated) pool
    used_blocks: int
    blocks_per_worker: int
    max_num_seqs: int
    held: int = 0  # requests routers hold while the serving pool has no worker
    # KV blocks of a long request (prompt and output at their 90th percentiles): each
    # serving worker keeps room for one beside its share of the blocks in use
    tail_blocks: int = 0
    # how long a long request lives at the targets: the TTFT target, then its output (the
    # 90th percentile) at the ITL target; what came in a window may run this long after it
    lifetime_s: float = 0.0
    # the share of answers that end at their max_tokens (signals.PoolLoad): near 1, the
    # max_tokens arriving say how long requests will live (forecast.arriving)
    answers_at_limit: float = 0.0
    # the router gives decode workers the prompt work the prefill pool cannot take (its
    # prefill balance, on by default); off, they prefill only while that pool is empty
    decode_prefills: bool = True
    # of prefill_tok_s, the rate that clears the prompt tokens queued now within the TTFT
    # target: a backlog, gone once the pools catch up, where the rest goes on
    backlog_tok_s: float = 0.0
    # prompt tokens/s arriving at the routers (their counts, forecast.py); None without
    # figures. What goes on: while a backlog drains, the tokens computed a second are the
    # pools' speed, not the demand
    arriving_tok_s: float | None = None
    # of prefill_tok_s, the share the serving pool computes whatever the prefill pool's
    # size (short prompts, as the routers counted them arriving): no prefill worker takes
    # it, so none is kept for it (bench-autoscale's ramp with the router's default
    # --local-prefill-tokens: its decode-heavy phase of 64-token prompts kept one ~11 s
    # longer, as taking them would have sped the decode pool up)
    local_share: float = 0.0
    # seconds from asking for a decode worker to its serving, as last seen (0: none seen):
    # a backlog the pools drain sooner than that asks no decode worker (size())
    start_s: float = 0.0

    @property
    def local_tok_s(self) -> float:
        """The prompt work no prefill worker gets."""
        return self.prefill_tok_s * self.local_share

    @property
    def remote_tok_s(self) -> float:
        """The prompt work a prefill worker can take."""
        return self.prefill_tok_s - self.local_tok_s

    @property
    def idle(self) -> bool:
        return self.prefill_tok_s == 0 and self.requests == 0 and self.held == 0


@dataclass(frozen=True, slots=True)
class Sizing:
    replicas: dict[str, int]
    reason: str
    itl_s: float | None = None  # predicted at the chosen size


def demand(
    loads: Mapping[str, PoolLoad],
    serving: str,
    targets: Targets,
    held: int = 0,
    decode_prefills: bool = True,
    start_s: float = 0.0,
) -> Demand:
    """`serving`: the pool that decodes (`decode`, or `both` when colocated); `held`: the
    requests routers hold for it while it has no worker; `decode_prefills`, `start_s`:
    Demand's."""
    backlog = sum(p.queued_prefill_tokens for p in loads.values())
    rate = sum(p.prefill_tokens_per_s for p in loads.values())
    s = loads.get(serving)
    # a p90 answer: of the requests finished lately, or longer where those running now
    # have already output more (the finished ones lag a change to longer answers)
    output = max(s.output_p90, s.running_output_p90) if s is not None else 0
    tail = 0
    if s is not None and s.block_size:  # prompts: every pool sees them; outputs: this one
        prompt = max(p.prompt_p90 for p in loads.values())
        tail = math.ceil((prompt + output) / s.block_size)
    lifetime = targets.ttft_s + output * targets.itl_s if s is not None else 0.0
    return Demand(
        prefill_tok_s=rate + backlog / targets.ttft_s,
        requests=s.requests if s else 0,
        used_blocks=s.used_blocks if s else 0,
        blocks_per_worker=s.blocks_per_worker if s else 0,
        max_num_seqs=s.max_num_seqs if s else 0,
        held=held,
        tail_blocks=tail,
        lifetime_s=lifetime,
        answers_at_limit=s.answers_at_limit if s is not None else 0.0,
        decode_prefills=decode_prefills,
        backlog_tok_s=backlog / targets.ttft_s,
        start_s=start_s,
    )


def size(d: Demand, cap: Capacity, targets: Targets, bounds: Mapping[str, Bounds]) -> Sizing | None:
    """The fewest workers per pool meeting the targets, or None when the speeds the sizing
    needs are not measured yet. `bounds` names the pools: {prefill, decode} or {both}."""
    if d.idle:
        return Sizing({p: b.min for p, b in bounds.items()}, "no load: each pool to its floor")
    if cap.prefill_tok_s is None and d.prefill_tok_s > 0:
        return None
    if cap.decode is None and d.requests > 0:
        return None
    serving = "both" if "both" in bounds else "decode"
    prefill = bounds.get("prefill", Bounds(0, 0))
    best: tuple[int, float, int, int] | None = None
    for p in range(prefill.min, prefill.max + 1):
        for n in range(max(bounds[serving].min, 1), bounds[serving].max + 1):
            itl = _predicted_itl(d, cap, targets, p, n)
            if itl is not None and (best is None or (p + n, itl) < best[:2]):
                best = (p + n, itl, p, n)
    if best is None:  # the serving pool at its max, the prefill pool covering what it can
        most = {serving: bounds[serving].max}
        if serving == "decode":
            most["prefill"] = _covering(d, cap, targets, prefill)
            if most["prefill"] > 0:
                most["decode"] = _decode_beside(d, cap, targets, most["prefill"], bounds["decode"])
        return Sizing(most, "the targets cannot be met within the bounds: " + _why(d, cap, None))
    _, itl, p, n = best
    if serving == "both":
        return Sizing({serving: n}, _why(d, cap, itl), itl)
    fewer = _decode_past_backlog(d, cap, targets, p, range(max(bounds[serving].min, 1), n))
    if fewer is not None:
        n, itl = fewer
    return Sizing({"prefill": p, "decode": n}, _why(d, cap, itl), itl)


def _predicted_itl(d: Demand, cap: Capacity, t: Targets, p: int, n: int) -> float | None:
    """The decode ITL with p prefill and n serving workers, None when a target is missed."""
    if d.max_num_seqs and d.requests > n * d.max_num_seqs:
        return None
    if d.blocks_per_worker and d.used_blocks / n + _tail(d, t) > t.kv_usage * d.blocks_per_worker:
        return None
    share = 0.0
    if d.prefill_tok_s > 0:
        assert cap.prefill_tok_s is not None
        covered = min(d.remote_tok_s, p * cap.prefill_tok_s * t.utilization)
        share = (d.prefill_tok_s - covered) / (n * cap.prefill_tok_s)
        if share > t.utilization:
            return None
    if d.requests == 0:
        return 0.0
    assert cap.decode is not None
    itl = cap.decode.step_s(d.requests / n) / (1.0 - share)
    return itl if itl <= t.itl_s else None


def _decode_past_backlog(
    d: Demand, cap: Capacity, t: Targets, p: int, fewer: range
) -> tuple[int, float] | None:
    """The fewest decode workers of `fewer` (and their ITL) meeting the targets beside `p`
    prefill workers with the prompt backlog cleared over a decode worker's start instead of
    the TTFT target: one asked for now serves only after that, so it takes none of a backlog
    gone sooner, and then idles (bench-autoscale's prefill-heavy step grew the decode pool
    for 5-14 s for it). The prefill pool is still sized on the whole backlog: there it is
    the first sign of a step in prompt work. None where the backlog changes nothing."""
    if d.backlog_tok_s == 0 or d.start_s <= t.ttft_s:
        return None
    spread = d.backlog_tok_s * (1.0 - t.ttft_s / d.start_s)  # what the longer horizon spares
    load = replace(
        d, prefill_tok_s=d.prefill_tok_s - spread, backlog_tok_s=d.backlog_tok_s - spread
    )
    for k in fewer:
        itl = _predicted_itl(load, cap, t, p, k)
        if itl is not None:
            return k, itl
    return None


def _tail(d: Demand, t: Targets) -> int:
    """The room a worker keeps for a long request; none where one alone is over the KV
    target (no number of workers makes room for it: the engine preempts or refuses it)."""
    return d.tail_blocks if d.tail_blocks < t.kv_usage * d.blocks_per_worker else 0


def _decode_beside(d: Demand, cap: Capacity, t: Targets, p: int, b: Bounds) -> int:
    """The fewest decode workers meeting the targets beside `p` prefill workers (the
    pool's max where none does), for the prompt work that reaches them: their short
    prompts alone when the router sends them no others (growing them for the rest cost
    bench-autoscale's ramp 17 worker-seconds a run), else what goes on past the prefill
    pool (the prompt work arriving), not the backlog: a decode worker started for a
    backlog serves seconds later, when the prefill pool (grown at once) has taken it,
    and then idles."""
    if d.decode_prefills:
        arriving = d.arriving_tok_s
        if arriving is None:
            arriving = max(0.0, d.prefill_tok_s - d.backlog_tok_s)
        load = replace(d, prefill_tok_s=arriving)
    else:  # theirs alone
        load, p = replace(d, prefill_tok_s=d.local_tok_s, local_share=1.0), 0
    n = range(max(b.min, 1), b.max + 1)
    return next((k for k in n if _predicted_itl(load, cap, t, p, k) is not None), b.max)


def _covering(d: Demand, cap: Capacity, t: Targets, b: Bounds) -> int:
    """Prefill workers for the prompt work at the utilization target, beside a decode pool
    at its max. Where decode workers take the prompts the prefill pool cannot (the
    router's prefill balance), whole workers' worth only: a prefill worker that would be
    busy less than half its time gives the decode pool back less than half a worker's time,
    and their share of that work (a few % of a step each) stays with them. Without the
    balance, decode workers prefill only while the prefill pool is empty: all of it (but
    the short prompts, which are theirs either way)."""
    if d.prefill_tok_s == 0 or cap.prefill_tok_s is None:
        return b.min
    workers = d.remote_tok_s / (cap.prefill_tok_s * t.utilization)
    need = math.floor(workers + 0.5) if d.decode_prefills else math.ceil(workers)
    return min(max(need, b.min), b.max)


def _why(d: Demand, cap: Capacity, itl: float | None) -> str:
    rate = "-" if cap.prefill_tok_s is None else f"{cap.prefill_tok_s:.0f}"
    predicted = "" if itl is None else f", predicted ITL {1000 * itl:.1f} ms"
    local = f", {d.local_tok_s:.0f}/s of them local (short prompts)" if d.local_share else ""
    backlog = f", {d.backlog_tok_s:.0f}/s of them the backlog" if d.backlog_tok_s else ""
    start = f"; a decode worker starts in {d.start_s:.1f} s" if d.start_s else ""
    return (
        f"prompt tokens {d.prefill_tok_s:.0f}/s to compute (a worker: {rate}/s{local}{backlog}); "
        f"{d.requests} requests decoding{predicted}; KV blocks in use {d.used_blocks}, "
        f"a p90 request's {d.tail_blocks}{start}"
    )
