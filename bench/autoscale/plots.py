"""Two PNGs (matplotlib, Agg backend, as loadtest/plots.py): replicas over time per pool,
and each request's TTFT and TPOT by when it was sent, every cluster, phases marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: benches run without a display
import matplotlib.pyplot as plt  # noqa: E402

from bench.autoscale.drive import Sent  # noqa: E402

COLORS = {"autoscaled": "tab:blue", "static_min": "tab:orange", "static_max": "tab:green"}


def write_plots(
    result: dict[str, Any],
    sent: dict[str, list[Sent]],
    steps: list[tuple[str, float]],
    stem: Path,
) -> list[Path]:
    paths = [Path(f"{stem}-replicas.png"), Path(f"{stem}-latency.png")]
    _replicas(paths[0], result, steps)
    _latency(paths[1], result, sent, steps)
    return paths


def _phases(ax: Any, steps: list[tuple[str, float]]) -> None:
    for name, t in steps:
        ax.axvline(t, color="grey", lw=0.6, ls=":")
        ax.text(
            t, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize="x-small", va="top"
        )


def _replicas(path: Path, result: dict[str, Any], steps: list[tuple[str, float]]) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for ax, (pool, p) in zip(axes, result["pools"].items(), strict=True):
        ts = [row[0] for row in p["timeline"]]
        ax.step(
            ts, [row[2] for row in p["timeline"]], where="post", label="desired", color="tab:blue"
        )
        ax.step(
            ts,
            [row[1] for row in p["timeline"]],
            where="post",
            label="serving",
            color="tab:cyan",
            ls="--",
        )
        for kind in ("static_min", "static_max"):
            n = result["clusters"][kind]["workers"][pool]
            ax.axhline(n, color=COLORS[kind], lw=0.8, label=kind)
        _phases(ax, steps)
        ax.set_ylabel(f"{pool} workers")
        ax.set_ylim(-0.2, max(row[2] for row in p["timeline"]) + 1.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left")
    axes[-1].set_xlabel("seconds from the ramp's start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency(
    path: Path,
    result: dict[str, Any],
    sent: dict[str, list[Sent]],
    steps: list[tuple[str, float]],
) -> None:
    slo = result["slo"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for ax, (title, get, limit) in zip(
        axes,
        (
            ("TTFT ms", lambda s: s.out.ttft, slo["ttft_s"]),
            ("TPOT ms", lambda s: s.out.tpot, slo["tpot_s"]),
        ),
        strict=True,
    ):
        for kind, rows in sent.items():
            pts = [
                (s.arrival.at_s, 1000 * v)
                for s in rows
                if s.out.success and (v := get(s)) is not None
            ]
            ax.scatter(
                [x for x, _ in pts],
                [y for _, y in pts],
                s=4,
                alpha=0.5,
                color=COLORS[kind],
                label=kind,
            )
        ax.axhline(1000 * limit, color="red", lw=0.8, label="SLO")
        _phases(ax, steps)
        ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left", markerscale=3)
    axes[-1].set_xlabel("sent, seconds from the ramp's start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
