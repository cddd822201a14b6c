"""Figures per cluster, bench-results/autoscale.json's shape, the goals and the table.

A request is good when it completed within the SLOs, which are the autoscaler's own
targets: TTFT <= --ttft-target-s and TPOT (its mean inter-token latency) <=
--itl-target-ms. Goodput = good requests / the ramp's length (the same for every cluster,
so goodputs compare as counts of good requests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.autoscale.drive import Sent
from bench.autoscale.timeline import (
    POOLS,
    Sample,
    at,
    changes,
    ready_after,
    timeline,
    too_close,
    worker_seconds,
)
from bench.results import print_goals
from loadtest.stats import Stats

GOODPUT_GOAL = 0.95  # of the static maximum cluster's
WORKER_SECONDS_GOAL = 0.60  # of the static maximum cluster's, at most


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float

    def met(self, s: Sent) -> bool:
        o = s.out
        tpot = o.tpot
        return o.success and o.ttft <= self.ttft_s and (tpot is None or tpot <= self.tpot_s)


def cluster_figures(
    sent: list[Sent], samples: list[Sample], ramp_s: float, slo: Slo
) -> dict[str, Any]:
    """One cluster's run: requests, goodput, worker-seconds over [0, last answer]."""
    ok = [s for s in sent if s.out.success]
    good = sum(slo.met(s) for s in sent)
    end = max([ramp_s] + [s.done_s for s in sent])
    ttft = Stats.of_seconds([s.out.ttft for s in ok])
    tpot = Stats.of_seconds([t for s in ok if (t := s.out.tpot) is not None])
    failures: dict[str, int] = {}
    errors: list[str] = []  # the first few, to say why
    for s in sent:
        if not s.out.success:
            failures[s.out.category] = failures.get(s.out.category, 0) + 1
            if len(errors) < 5:
                errors.append(f"{s.arrival.at_s:.1f} s: {s.out.category}: {s.out.error}"[:300])
    return {
        "requests": len(sent),
        "failed": len(sent) - len(ok),
        "failed_by_category": failures,
        "errors": errors,
        "good": good,
        "goodput_req_s": good / ramp_s,
        "worker_seconds": worker_seconds(samples, 0.0, end),
        "duration_s": end,
        "ttft_p50_ms": ttft.median,
        "ttft_p99_ms": ttft.p99,
        "tpot_mean_ms": tpot.mean,
        "tpot_p99_ms": tpot.p99,
        "phases": _by_phase(sent, slo),
        # [sent at s, TTFT ms, TPOT ms, good]: what the latency plot shows, for a look later
        "by_request": [_row(s, slo) for s in sent],
    }


def _row(s: Sent, slo: Slo) -> list[object]:
    o, tpot = s.out, s.out.tpot
    ttft = round(1000 * o.ttft, 1) if o.success else None
    return [
        round(s.arrival.at_s, 2),
        ttft,
        None if tpot is None else round(1000 * tpot, 1),
        slo.met(s),
    ]


def _by_phase(sent: list[Sent], slo: Slo) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in sent:
        p = out.setdefault(s.arrival.phase, {"requests": 0, "good": 0, "failed": 0})
        p["requests"] += 1
        p["good"] += slo.met(s)
        p["failed"] += not s.out.success
    return out


def pools(samples: list[Sample], steps: list[tuple[str, float]], ramp_s: float) -> dict[str, Any]:
    """Per pool of the autoscaled cluster: sizes at the start, most, at the end, the
    timeline, and how soon a load step that grew the pool had a new worker serving."""
    first = at(samples, 0.0) or (samples[0] if samples else Sample(0.0, {}))
    during = [s for s in samples if s.at_s >= 0.0] or [first]
    out: dict[str, Any] = {}
    for pool in POOLS:
        grew = ready_after(samples, pool, steps, ramp_s)
        waits = [g["ready_after_s"] for g in grew if g["ready_after_s"] is not None]
        out[pool] = {
            "initial": first.cost(pool),
            "max": max(s.cost(pool) for s in during),
            "final": during[-1].cost(pool),
            "ready_after_s": max(waits) if waits else None,  # the slowest step's
            "ready_after": grew,
            "timeline": timeline(samples, pool),  # [t, ready, desired]
        }
    return out


def stability(samples: list[Sample], window_s: float) -> dict[str, Any]:
    """Changes per pool from the ramp's start, and any two inside one stable window."""
    found = changes(samples, 0.0)
    close = too_close(found, window_s)
    return {
        "scale_changes": {p: sum(c.pool == p for c in found) for p in POOLS},
        "changes": [[round(c.at_s, 2), c.pool, c.before, c.after] for c in found],
        "within_one_stable_window": {
            p: [[round(a, 2), round(b, 2)] for a, b in v] for p, v in close.items()
        },
    }


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    c = result["clusters"]
    auto, top = c["autoscaled"], c["static_max"]
    good = auto["goodput_req_s"] / top["goodput_req_s"] if top["goodput_req_s"] else None
    cost = auto["worker_seconds"] / top["worker_seconds"] if top["worker_seconds"] else None
    flaps = sum(map(len, result["stability"]["within_one_stable_window"].values()))
    checks = (
        ("failed", auto["failed"], "<=", 0),
        ("goodput_vs_static_max", good, ">=", GOODPUT_GOAL),
        ("worker_seconds_vs_static_max", cost, "<=", WORKER_SECONDS_GOAL),
        ("changes_within_one_stable_window", flaps, "<=", 0),
    )
    out = {}
    for name, value, op, target in checks:
        ok = value is not None and (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "goal": f"{op} {target}", "pass": ok}
    return out


def print_report(result: dict[str, Any]) -> None:
    top = result["clusters"]["static_max"]
    print(
        f"\n{'cluster':>11} {'sent':>5} {'failed':>6} {'good':>5} {'goodput':>8} {'vs max':>7} "
        f"{'worker-s':>9} {'vs max':>7} {'TTFT p99':>9} {'TPOT p99':>9}"
    )
    for name, c in result["clusters"].items():
        gp = c["goodput_req_s"] / top["goodput_req_s"] if top["goodput_req_s"] else 0.0
        ws = c["worker_seconds"] / top["worker_seconds"] if top["worker_seconds"] else 0.0
        print(
            f"{name:>11} {c['requests']:>5} {c['failed']:>6} {c['good']:>5} "
            f"{c['goodput_req_s']:>6.2f}/s {gp:>6.2f}x {c['worker_seconds']:>9.0f} "
            f"{ws:>6.2f}x {c['ttft_p99_ms']:>7.0f}ms {c['tpot_p99_ms']:>7.1f}ms"
        )
    print("\nautoscaled pools (initial / max / final; load step -> new worker serving):")
    for pool, p in result["pools"].items():
        steps = (
            ", ".join(
                f"{g['step']} {g['from']}->{g['to']} in {g['ready_after_s']} s"
                for g in p["ready_after"]
            )
            or "never grew"
        )
        print(f"  {pool:>7}: {p['initial']} / {p['max']} / {p['final']}; {steps}")
    s = result["stability"]
    window = result["pacing"]["stable_window_s"]
    print(
        f"  changes: {s['scale_changes']}; two inside one {window:g} s stable window: "
        f"{s['within_one_stable_window']}"
    )
    print_goals("autoscaled", result["goals"])
