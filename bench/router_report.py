"""`make bench-router`'s report: the table, its ratios to the floor measured in the same
run (bench/router_floor.py), and the issue's goals beside the figures."""

from __future__ import annotations

from typing import Any

# Goals and today's figures (issue 11, "make bench-router").
GOAL_ROUTER_CPU_MS = 1.0
GOAL_TTFT_P50_MS_AT_1 = 2.0
ISSUE_TODAY = {"ttft_p50_ms_at_1": 3.5, "req_s_at_64": 339.0}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(
    rows: list[dict[str, Any]],
    with_floor: bool = False,
    procs: tuple[str, ...] = ("router", "worker", "client"),
) -> str:
    """`procs`: the processes whose CPU per request the rows carry, in column order."""
    head = f"{'conc':>5} {'done':>6} {'req/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
    head += "".join(f"{p + ' ms/req':>15}" for p in procs) + f" {'load':>5}"
    if with_floor:
        head += f" {'router/floor':>13} {'TTFT/floor':>11}"
    lines = [head]
    for r in rows:
        line = (
            f"{r['concurrency']:>5} {r['completed']:>6} {r['req_s']:>8.1f} "
            f"{r['ttft_p50_ms']:>9.2f} {r['ttft_p99_ms']:>9.2f} "
            + "".join(f"{_fmt(r[p + '_cpu_ms_per_req']):>15}" for p in procs)
            + f" {_fmt(r.get('loadavg_1m'), '.1f'):>5}"
        )
        if with_floor:
            line += (
                f" {_fmt(r.get('router_cpu_ms_per_req_vs_floor'), '.2f') + 'x':>13}"
                f" {_fmt(r.get('ttft_p50_ms_vs_floor'), '.2f') + 'x':>11}"
            )
        lines.append(line)
    return "\n".join(lines)


def _span(rows: list[dict[str, Any]], key: str) -> str:
    got = [r[key] for r in rows if r[key] is not None]
    return f"{min(got):.2f}-{max(got):.2f}" if got else "-"


def _at_1(rows: list[dict[str, Any]]) -> float | None:
    return next((r["ttft_p50_ms"] for r in rows if r["concurrency"] == 1), None)


def goals(
    rows: list[dict[str, Any]], floor: list[dict[str, Any]], tcp_floor: list[dict[str, Any]]
) -> list[str]:
    """`floor`: the stack's (gRPC); `tcp_floor`: the same with a TCP connection in its place."""
    by_c = {r["concurrency"]: r for r in rows}
    cpu = "router_cpu_ms_per_req"
    out = [
        f"router CPU per request: {_span(rows, cpu)} ms (goal <= {GOAL_ROUTER_CPU_MS:g} ms; "
        f"Dynamo's frontend 0.66-0.80; the floor of its stack, this run: {_span(floor, cpu)}; "
        f"with TCP in gRPC's place: {_span(tcp_floor, cpu)})"
    ]
    if 1 in by_c:
        out.append(
            f"TTFT p50 at concurrency 1: {by_c[1]['ttft_p50_ms']:.2f} ms "
            f"(goal <= {GOAL_TTFT_P50_MS_AT_1:g} ms; issue's today "
            f"{ISSUE_TODAY['ttft_p50_ms_at_1']:g} ms; the floor, this run: "
            f"{_fmt(_at_1(floor))} ms; with TCP: {_fmt(_at_1(tcp_floor))} ms)"
        )
    if 64 in by_c:
        out.append(
            f"req/s at concurrency 64: {by_c[64]['req_s']:.1f} "
            f"(issue's today {ISSUE_TODAY['req_s_at_64']:g})"
        )
    return out


def against_floor(rows: list[dict[str, Any]], floor: list[dict[str, Any]]) -> None:
    """Adds each row's ratios to the floor's row of the same concurrency."""
    by_c = {r["concurrency"]: r for r in floor}
    for row in rows:
        f = by_c.get(row["concurrency"])
        if f is None:
            continue
        for key in ("router_cpu_ms_per_req", "ttft_p50_ms"):
            ours, theirs = row[key], f[key]
            row[f"{key}_vs_floor"] = ours / theirs if ours is not None and theirs else None
