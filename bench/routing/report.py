"""The comparison as a table per workload, the goals, and bench-results/routing.json."""

from __future__ import annotations

from typing import Any

BASELINE = "round-robin"
# (name, kv's figure over its reference, at most / at least)
HIT_GOAL = 0.9  # kv's hit rate >= 90% of the oracle's
TTFT_GOAL = 0.5  # kv's mean TTFT <= half of round-robin's
LOAD_GOAL = 1.5  # no prefill worker above 1.5x the mean load


def add_ratios(workload: dict[str, Any]) -> None:
    """hit/oracle and TTFT over round-robin's, per mode, in place."""
    oracle = workload["oracle_hit_rate"]
    base = workload["modes"].get(BASELINE, {}).get("ttft_mean_ms")
    for m in workload["modes"].values():
        hit = m.get("hit_rate")
        m["hit_vs_oracle"] = hit / oracle if hit is not None and oracle else None
        mean = m.get("ttft_mean_ms")
        m["ttft_vs_round_robin"] = mean / base if base and mean else None


def goals(workloads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, w in workloads.items():
        kv = w["modes"].get("kv")
        if kv is None:
            continue
        checks = (
            ("hit_vs_oracle", kv.get("hit_vs_oracle"), ">=", HIT_GOAL),
            ("ttft_vs_round_robin", kv.get("ttft_vs_round_robin"), "<=", TTFT_GOAL),
            ("max_load_ratio", kv.get("max_load_ratio"), "<=", LOAD_GOAL),
            ("failed", kv.get("failed", 0) + kv.get("cancelled", 0), "<=", 0),
        )
        for what, value, op, target in checks:
            ok = value is not None and (value >= target if op == ">=" else value <= target)
            out[f"{name}.kv.{what}"] = {"value": value, "goal": f"{op} {target}", "pass": ok}
    return out


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_workload(name: str, w: dict[str, Any]) -> None:
    s = w["workload"]
    print(
        f"\n== {name}: {s['requests']} requests, {s['prompt_tokens_mean']:.0f} prompt tokens "
        f"on average, {w['cluster']['prefill_workers']} {w['cluster']['engine']} prefill "
        f"workers; oracle hit rate {w['oracle_hit_rate']:.1%}"
        f" (pooled LRU of the same memory: {_f(w.get('pooled_lru_hit_rate'), '.1%')})"
    )
    print(
        f"{'mode':>13} {'hit':>6} {'hit/orc':>8} {'TTFT mean':>10} {'p99':>8} "
        f"{'vs rr':>6} {'max load':>9} {'busy':>5} {'failed':>7} {'secs':>5}"
    )
    for mode, m in w["modes"].items():
        print(
            f"{mode:>13} {_f(m['hit_rate'], '6.1%')} {_f(m['hit_vs_oracle'], '7.2f')}x "
            f"{m['ttft_mean_ms']:>8.0f}ms {m['ttft_p99_ms']:>6.0f}ms "
            f"{_f(m['ttft_vs_round_robin'], '5.2f')}x {_f(m['max_load_ratio'], '8.2f')}x "
            f"{_f(m.get('prefill_busy'), '5.0%')} {m['failed'] + m['cancelled']:>7d} "
            f"{m['duration_s']:>5.0f}"
        )
