"""`make bench-autoscale`: the autoscaler on a ramp, against static clusters of the
bounds' minimum and maximum, one after the other in one run.

    for each of autoscaled, static_min, static_max (clusters.py):
      tandem serve (mock workers) ──> [autoscaled: wait for the pools' floors]
        ──> the ramp (ramp.py: up, plateau, prefill-heavy, decode-heavy, down), open loop
            while a sampler reads replicas per pool every 0.5 s (timeline.py)
        ──> [autoscaled: wait for the floors again, for `final`] ──> stopped

The autoscaler's windows are seconds here, not minutes (clusters.Pacing; written to the
JSON as `pacing`), so that the three clusters run in about ten minutes.

Written to bench-results/autoscale.json: requests_sent, requests_failed, scale_changes;
pools.{prefill,decode}: initial, max, final, timeline, ready_after_s; clusters.{autoscaled,
static_min,static_max}: goodput_req_s, worker_seconds, failed; the goals; and plots of
replicas and latency over time (autoscale-replicas.png, autoscale-latency.png).

    python -m bench.autoscale [--out DIR] [--time-scale 1.0] [--clusters autoscaled,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.autoscale import clusters, ramp
from bench.autoscale.drive import Sent, drive
from bench.autoscale.plots import write_plots
from bench.autoscale.report import (
    Slo,
    cluster_figures,
    goals,
    pools,
    print_report,
    stability,
)
from bench.autoscale.timeline import Sample, Sampler
from bench.results import write

LEAD_S = 1.0  # samples taken before the ramp starts: the pools' initial sizes


def run_cluster(
    setup: clusters.Setup,
    kind: str,
    arrivals: list[ramp.Arrival],
    ramp_s: float,
    logs: Path,
    every_s: float,
) -> tuple[list[Sent], list[Sample]]:
    print(f"\n{kind}: starting tandem serve {clusters.KINDS.index(kind) + 1}/3", flush=True)
    served = clusters.start(setup, kind, logs)
    try:
        t0 = time.monotonic()
        probe = Sampler(served.url, t0, every_s)
        window = setup.pacing.stable_window_s
        if kind == "autoscaled":
            waited = clusters.settle(probe.sizes, setup.floors(), 3 * window + 30)
            print(f"  at the floors {setup.floors()} after {waited:.0f} s", flush=True)
        sampler = Sampler(served.url, time.monotonic() + LEAD_S, every_s)
        sampler.start()
        print(f"  ramp: {len(arrivals)} requests over {ramp_s:.0f} s", flush=True)
        sent = asyncio.run(drive(served.url, arrivals, sampler.t0))
        if kind == "autoscaled":
            clusters.settle(sampler.sizes, setup.floors(), 4 * window + 10)
        return sent, sampler.stop()
    finally:
        served.proc.stop()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    setup = clusters.Setup(
        prefill=_bounds(args.prefill_replicas),
        decode=_bounds(args.decode_replicas),
        prefill_balance=args.prefill_balance,
        pacing=replace(
            clusters.Pacing(),
            stable_window_s=args.stable_window_s,
            down_cooldown_s=args.stable_window_s,
        ),
    )
    phases = ramp.scaled(ramp.RAMP, args.time_scale)
    arrivals = ramp.schedule(phases, args.seed)
    ramp_s = ramp.length_s(phases)
    steps = ramp.phase_starts(phases)
    slo = Slo(setup.ttft_target_s, setup.itl_target_ms / 1000)
    out = Path(args.out)
    p = setup.pacing
    print(
        f"autoscaler windows scaled to seconds (production: minutes): interval "
        f"{p.interval_s:g} s, panic {p.panic_window_s:g} s, stable {p.stable_window_s:g} s, "
        f"cooldowns up {p.up_cooldown_s:g} s / down {p.down_cooldown_s:g} s; SLOs: TTFT <= "
        f"{slo.ttft_s:g} s, TPOT <= {1000 * slo.tpot_s:g} ms",
        flush=True,
    )
    runs: dict[str, tuple[list[Sent], list[Sample]]] = {}
    for kind in args.clusters.split(","):
        runs[kind] = run_cluster(
            setup, kind, arrivals, ramp_s, out / "autoscale-runs", args.sample_every_s
        )
    figures = {k: cluster_figures(s, samples, ramp_s, slo) for k, (s, samples) in runs.items()}
    for kind, f in figures.items():
        f["workers"] = setup.sizes(kind) if kind != "autoscaled" else None
    auto_sent, auto_samples = runs.get("autoscaled", ([], []))
    result: dict[str, Any] = {
        "setup": {
            **setup.to_dict(),
            "seed": args.seed,
            "cpus": os.cpu_count(),
            "ramp": [asdict(p) for p in phases],
            "sample_every_s": args.sample_every_s,
        },
        "pacing": {
            **asdict(setup.pacing),
            "note": "seconds, not the production minutes: "
            "60 s stable, 6 s panic, 15 s up and 120 s down cooldown by default",
        },
        "slo": asdict(slo),
        "requests_sent": len(auto_sent),
        "requests_failed": figures.get("autoscaled", {}).get("failed"),
    }
    if "autoscaled" in runs:
        result["stability"] = stability(auto_samples, setup.pacing.stable_window_s)
        result["scale_changes"] = result["stability"]["scale_changes"]
        result["pools"] = pools(auto_samples, steps, ramp_s)
    result["clusters"] = figures
    if set(clusters.KINDS) <= figures.keys():
        result["goals"] = goals(result)
        sent = {k: s for k, (s, _) in runs.items()}
        result["plots"] = [str(p) for p in write_plots(result, sent, steps, out / "autoscale")]
    return result


def _bounds(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.autoscale",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    d = clusters.Setup()
    ap.add_argument("--out", default="bench-results")
    ap.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="every phase this many times as long (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clusters", default=",".join(clusters.KINDS))
    ap.add_argument("--prefill-replicas", default="{}:{}".format(*d.prefill))
    ap.add_argument("--decode-replicas", default="{}:{}".format(*d.decode))
    ap.add_argument(
        "--stable-window-s",
        type=float,
        default=d.pacing.stable_window_s,
        help="also the down cooldown (default %(default)s)",
    )
    ap.add_argument("--sample-every-s", type=float, default=0.5)
    ap.add_argument(
        "--no-prefill-balance",
        dest="prefill_balance",
        action="store_false",
        help="strict: prompts go to the prefill pool only while it has workers (default: "
        "the router's, which gives decode workers the prompt work it cannot take in time)",
    )
    args = ap.parse_args(argv)
    unknown = set(args.clusters.split(",")) - set(clusters.KINDS)
    if unknown:
        ap.error(f"--clusters takes {', '.join(clusters.KINDS)}; not {', '.join(unknown)}")
    result = bench(args)
    if "goals" in result:
        print_report(result)
    write(Path(args.out) / "autoscale.json", result)


if __name__ == "__main__":
    main()
