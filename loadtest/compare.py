"""Two result files side by side with ratios (B/A), as markdown tables.

Either file may be one run point (LABEL-WORKLOAD-cN-rR.json) or a summary
(LABEL-summary.json); points are matched by workload and load point, or by order when the
names differ but the counts agree (the same scenario under two labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = (
    "completed",
    "failed",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
)


def compare_files(path_a: str | Path, path_b: str | Path) -> str:
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    return compare(a, b, f"A: {path_a}", f"B: {path_b}")


def compare(a: dict[str, Any], b: dict[str, Any], title_a: str = "A", title_b: str = "B") -> str:
    pa, pb = points(a), points(b)
    pairs = [(k, pa[k], pb[k]) for k in pa if k in pb]
    if not pairs and len(pa) == len(pb):
        pairs = [(f"{ka} vs {kb}", pa[ka], pb[kb]) for ka, kb in zip(pa, pb, strict=True)]
    if not pairs:
        raise ValueError(f"no common run points: A has {list(pa)}, B has {list(pb)}")
    parts = [f"{title_a} ({_label(a)})\n{title_b} ({_label(b)})"]
    for key, x, y in pairs:
        lines = [f"### {key}", "", "| metric | A | B | B/A |", "|---|---:|---:|---:|"]
        lines += [
            f"| {m} | {_num(x.get(m))} | {_num(y.get(m))} | {ratio(x.get(m), y.get(m))} |"
            for m in METRICS
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def points(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run points of a point file or a summary, by "workload cN rR"."""
    if "steps" not in doc:
        return {_key(doc): doc}
    out: dict[str, dict[str, Any]] = {}
    for step in doc["steps"]:
        rows = list(step["workloads"].values())
        if len(rows) > 1:
            rows.append(step["overall"])
        out |= {_key(r): r for r in rows}
    return out


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or a == 0:
        return "-"
    return f"{b / a:.2f}x"


def _key(d: dict[str, Any]) -> str:
    c = d.get("max_concurrency")
    return f"{d.get('workload', 'run')} c{'inf' if c is None else c} r{d.get('request_rate')}"


def _label(doc: dict[str, Any]) -> str:
    return str(doc.get("label", "?"))


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.2f}"
