"""The comparison's figures: ratios (disagg / colocated), the goal, the table, the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ITL_GOAL = 0.5  # the chats' p99 ITL, disagg over colocated, at most
THROUGHPUT_GOAL = 0.9  # output tokens/s, disagg over colocated, at least
HOST_BOUND = 0.95  # busy share of all cores at the p90 second
FIGURES = ("itl_p99_ms", "itl_median_ms", "ttft_p99_ms", "output_tok_s", "goodput_req_s")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(d: dict[str, Any], c: dict[str, Any]) -> dict[str, float | None]:
    return {k: ratio(d.get(k), c.get(k)) for k in FIGURES}


def goal(r: dict[str, float | None], failed: int) -> dict[str, Any]:
    itl, tput = r["itl_p99_ms"], r["output_tok_s"]
    itl_ok = itl is not None and itl <= ITL_GOAL
    tput_ok = tput is not None and tput >= THROUGHPUT_GOAL
    return {
        "itl_p99_ratio_max": ITL_GOAL,
        "throughput_ratio_min": THROUGHPUT_GOAL,
        "itl_ok": itl_ok,
        "throughput_ok": tput_ok,
        "no_failures": failed == 0,
        "met": itl_ok and tput_ok and failed == 0,
    }


def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(result: dict[str, Any]) -> str:
    head = ("", "ITL p99 ms", "ITL p50 ms", "TTFT p99 ms", "out tok/s", "goodput req/s", "failed")
    rows = [f"{head[0]:>20} " + " ".join(f"{h:>13}" for h in head[1:])]
    for mode in ("disagg", "colocated"):
        m = result[mode]
        cells = [_cell(m[k], ".1f" if k != "goodput_req_s" else ".2f") for k in FIGURES]
        lost = m["failed"] + m.get("cancelled", 0)
        rows.append(f"{mode:>20} " + " ".join(f"{c:>13}" for c in [*cells, str(lost)]))
    r = result["ratios"]
    cells = [_cell(r[k], ".2f") + "x" if r[k] is not None else "-" for k in FIGURES]
    rows.append(f"{'disagg / colocated':>20} " + " ".join(f"{c:>13}" for c in cells))
    g = result["goal"]
    verdict = "MET" if g["met"] else "NOT MET"
    rows.append(
        f"goal (chats' p99 ITL <= {ITL_GOAL}x colocated at >= {THROUGHPUT_GOAL}x its "
        f"throughput, no failures): {verdict}"
    )
    rows += [host_line(mode, result[mode].get("host_cpu")) for mode in ("disagg", "colocated")]
    return "\n".join(rows)


def host_bound(host: dict[str, Any] | None) -> bool:
    """Busy for most of the run: the workers' steps waited for a core, so the latencies
    are the host's, not the timing model's."""
    return bool(host and host.get("samples") and host["busy_p90"] >= HOST_BOUND * host["cores"])


def host_line(mode: str, host: dict[str, Any] | None) -> str:
    if not host or not host.get("samples"):
        return f"host CPU during {mode}: not sampled"
    warn = "  HOST-BOUND: these figures are noise" if host_bound(host) else ""
    return (
        f"host CPU during {mode}: {host['busy_mean']:.2f} of {host['cores']} cores busy "
        f"(p90 {host['busy_p90']:.2f}, max {host['busy_max']:.2f}){warn}"
    )


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
