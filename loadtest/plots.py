"""PNG plots of a scenario (matplotlib, Agg backend: no display needed).

- throughput: output tok/s, req/s and goodput against the swept concurrency or rate
- latency: TTFT mean/p99, TPOT mean, ITL p99, E2EL p99 against the same
- cdf: the distribution of TTFT, ITL and E2EL, one line per step and workload
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot; a load test runs on servers without a display
import matplotlib.pyplot as plt  # noqa: E402

from loadtest.result import RunResult  # noqa: E402

if TYPE_CHECKING:
    from loadtest.scenario import ScenarioResult


def write_plots(result: ScenarioResult, stem: Path) -> list[Path]:
    axis_name, ticks = sweep_axis(result)
    names = list(result.steps[0].workloads)
    series = {n: [s.workloads[n] for s in result.steps] for n in names}
    paths = [Path(f"{stem}-throughput.png"), Path(f"{stem}-latency.png"), Path(f"{stem}-cdf.png")]
    _lines(
        paths[0],
        axis_name,
        ticks,
        series,
        {
            "output tok/s": lambda r: r.output_throughput,
            "requests/s": lambda r: r.request_throughput,
            "goodput requests/s": lambda r: r.request_goodput or 0.0,
        },
    )
    _lines(
        paths[1],
        axis_name,
        ticks,
        series,
        {
            "TTFT mean ms": lambda r: r.ttft_ms.mean,
            "TTFT p99 ms": lambda r: r.ttft_ms.p99,
            "TPOT mean ms": lambda r: r.tpot_ms.mean,
            "ITL p99 ms": lambda r: r.itl_ms.p99,
            "E2EL p99 ms": lambda r: r.e2el_ms.p99,
        },
    )
    _cdf(paths[2], result, ticks)
    return paths


def sweep_axis(result: ScenarioResult) -> tuple[str, list[str]]:
    """What changes from step to step (the swept workload's concurrency, rate, or both)."""
    by_workload = {
        n: [s.workloads[n].info.load for s in result.steps] for n in result.steps[0].workloads
    }
    loads = max(by_workload.values(), key=lambda ls: len(set(ls)))
    conc = ["inf" if x.concurrency is None else str(x.concurrency) for x in loads]
    rate = ["inf" if math.isinf(x.request_rate) else f"{x.request_rate:g}" for x in loads]
    if len(set(rate)) == 1:
        return "max concurrency", conc
    if len(set(conc)) == 1:
        return "request rate (req/s)", rate
    return "concurrency / rate", [f"{c} / {r}" for c, r in zip(conc, rate, strict=True)]


def _lines(
    path: Path,
    axis_name: str,
    ticks: list[str],
    series: dict[str, list[RunResult]],
    metrics: dict[str, Any],
) -> None:
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    xs = list(range(len(ticks)))
    for ax, (title, get) in zip(axes[0], metrics.items(), strict=True):
        for name, results in series.items():
            ax.plot(xs, [get(r) for r in results], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel(axis_name)
        ax.set_xticks(xs, ticks)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cdf(path: Path, result: ScenarioResult, ticks: list[str]) -> None:
    getters = {
        "TTFT ms": lambda r: [o.ttft for o in r.requests if o.success],
        "ITL ms": lambda r: [x for o in r.requests if o.success for x in o.itls],
        "E2EL ms": lambda r: [o.e2el for o in r.requests if o.success],
    }
    fig, axes = plt.subplots(1, len(getters), figsize=(4.2 * len(getters), 3.6), squeeze=False)
    for ax, (title, get) in zip(axes[0], getters.items(), strict=True):
        for step, tick in zip(result.steps, ticks, strict=True):
            for name, r in step.workloads.items():
                values = sorted(v * 1000.0 for v in get(r))
                if values:
                    ys = [(i + 1) / len(values) for i in range(len(values))]
                    label = name if len(result.steps) == 1 else f"{name} @ {tick}"
                    ax.step(values, ys, where="post", label=label)
        ax.set_title(f"{title} (CDF)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
