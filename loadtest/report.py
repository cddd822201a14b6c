"""Result files: one JSON per workload per step, a summary JSON, a markdown table, plots.

OUT/LABEL-WORKLOAD-c4-rinf.json   one run point, vLLM's fields (per-request lists included)
OUT/LABEL-summary.json            every point without the per-request lists
OUT/LABEL-summary.md              the table printed at the end of a run
OUT/LABEL-{throughput,latency,cdf}.png
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.config import LoadPoint
from loadtest.result import RunResult

if TYPE_CHECKING:
    from loadtest.scenario import ScenarioResult


def point_name(load: LoadPoint) -> str:
    c = "inf" if load.concurrency is None else str(load.concurrency)
    r = "inf" if math.isinf(load.request_rate) else f"{load.request_rate:g}"
    return f"c{c}-r{r}"


def write_all(out_dir: Path, result: ScenarioResult) -> list[Path]:
    from loadtest import plots  # matplotlib is slow to import; only when writing files

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _safe(result.label)
    files = []
    for step in result.steps:
        rows = list(step.workloads.values())
        if len(rows) > 1:
            rows.append(step.overall)
        for r in rows:
            path = out_dir / f"{stem}-{_safe(r.info.workload)}-{point_name(r.info.load)}.json"
            files.append(_write_json(path, r.to_dict()))
    files.append(_write_json(out_dir / f"{stem}-summary.json", summary(result)))
    md = out_dir / f"{stem}-summary.md"
    md.write_text(markdown_table(result) + "\n")
    files.append(md)
    files += plots.write_plots(result, out_dir / stem)
    return files


def summary(result: ScenarioResult) -> dict[str, Any]:
    return {
        "scenario": result.name,
        "label": result.label,
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "steps": [
            {
                "index": s.index,
                "workloads": {n: r.to_dict(per_request=False) for n, r in s.workloads.items()},
                "overall": s.overall.to_dict(per_request=False),
                "server_metrics": s.server_metrics,
            }
            for s in result.steps
        ],
    }


_COLUMNS = (
    "workload",
    "concurrency",
    "rate (req/s)",
    "completed",
    "failed",
    "req/s",
    "output tok/s",
    "TTFT mean ms",
    "TTFT p99 ms",
    "TPOT mean ms",
    "ITL p99 ms",
    "E2EL p99 ms",
    "goodput req/s",
)


def markdown_table(result: ScenarioResult) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---" + "|---:" * (len(_COLUMNS) - 1) + "|"]
    for step in result.steps:
        rows = list(step.workloads.values())
        if len(rows) > 1:
            rows.append(step.overall)
        lines += ["| " + " | ".join(_row(r)) + " |" for r in rows]
    return "\n".join(lines)


def _row(r: RunResult) -> list[str]:
    load = r.info.load
    failed = str(r.failed) + (f" ({_breakdown(r.error_breakdown)})" if r.failed else "")
    return [
        r.info.workload,
        "-" if load.concurrency is None else str(load.concurrency),
        "inf" if math.isinf(load.request_rate) else f"{load.request_rate:g}",
        str(r.completed),
        failed,
        f"{r.request_throughput:.2f}",
        f"{r.output_throughput:.1f}",
        f"{r.ttft_ms.mean:.1f}",
        f"{r.ttft_ms.p99:.1f}",
        f"{r.tpot_ms.mean:.1f}",
        f"{r.itl_ms.p99:.1f}",
        f"{r.e2el_ms.p99:.1f}",
        "-" if r.request_goodput is None else f"{r.request_goodput:.2f}",
    ]


def _breakdown(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))


def _write_json(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"
