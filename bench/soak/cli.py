"""`make soak`: minutes of saturation while workers are killed (kill -9) and restarted.

    Redis ── prefill-0..P-1, decode-0..D-1   `tandem worker --engine mock`, own processes
          └─ `tandem router` (kv routing, every prompt prefilled remotely)  <── senders

`--senders` closed-loop clients stream /v1/completions, more than the decode pool admits
(max_num_seqs x 2 per worker), so the router answers some of them 429; a sender told 429
(or 503: no worker of a pool is up) waits the Retry-After second, as a polite client does.
Every `--kill-every-s` a worker is killed with SIGKILL, alternately a decode and a prefill
one, and started again at once under the same id. Prompts come from a fixed set and
sampling is greedy: every completion of one prompt must have the same text (the mock's
tokens are a function of the token chain), so a request migrated to another worker that
continued it wrongly is counted.

Written to bench-results/soak.json:
    requests   sent, completed, failed (by category: any answer but 200-with-[DONE] and
               429), rejected (429), texts that differ from the prompt's first completion
    router     its /metrics at the end: decode retries, prefill retries and fallbacks,
               breaker changes, health-check failures, HTTP errors by status
    processes  each process's RSS (/proc/PID/status VmRSS) when it started and at the end
               (a killed worker: just before its kill), router and Redis included
    pools      each worker's block pool once the load is over: idle, leases, integrity

Bounded: senders stop at the deadline, each request has a timeout, kills are counted.

    python -m bench.soak [--duration-s 180] [--kill-every-s 30] [--senders 48] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.soak.cluster import TIMING, Cluster
from bench.soak.config import SoakConfig
from bench.soak.load import PROMPTS, router_figures, run_load
from services.cluster.models import pull_default
from services.cluster.redis_server import RedisServer


def report(result: dict[str, Any]) -> str:
    r = result["requests"]
    lines = [
        f"{r['sent']} requests in {result['duration_s']:.0f} s, {len(result['kills'])} workers "
        f"killed: {r['completed']} completed, {r['failed']} failed, {r['rejected_429']} "
        f"answered 429, {r['mismatched_text']} with a wrong text ({r['completed_per_s']:.1f}/s)",
    ]
    for name, by_label in result["router"].items():
        if by_label:
            parts = ", ".join(f"{k or 'all'} {v:g}" for k, v in sorted(by_label.items()))
            lines.append(f"  {name}: {parts}")
    for worker_id, pool in sorted(result["pools"].items()):
        if pool.get("error") or pool.get("integrity_error") or not pool.get("idle"):
            lines.append(f"  {worker_id}'s block pool after the load: {pool}")
    lines.append(f"  {'process':<12} {'pid':>8} {'RSS start MiB':>14} {'RSS end MiB':>12}")
    for p in result["processes"]:
        start, end = _mib(p["rss_start_kb"]), _mib(p["rss_end_kb"])
        note = " (killed)" if p["killed"] else ""
        lines.append(f"  {p['name']:<12} {p['pid']:>8} {start:>14} {end:>12}{note}")
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def soak(c: SoakConfig, out: Path) -> dict[str, Any]:
    logs = out / "soak-runs"
    logs.mkdir(parents=True, exist_ok=True)
    with RedisServer() as redis_server:
        cluster = Cluster(c, logs, pull_default(), redis_server)
        try:
            cluster.start()
            print(
                f"soak: {c.senders} senders for {c.duration_s:g} s, a worker killed every "
                f"{c.kill_every_s:g} s",
                flush=True,
            )
            tally, kills, duration = asyncio.run(run_load(cluster))
            for t in cluster.tracked:
                if not t.killed:
                    t.end()
            time.sleep(2.0)  # the last streams' clean-up on the workers
            pools = cluster.pools()
            router = router_figures(cluster.url)
        finally:
            cluster.stop()
    return {
        "setup": {**asdict(c), "mock_timing": TIMING, "prompts": PROMPTS, "cpus": os.cpu_count()},
        "duration_s": duration,
        "requests": tally.figures(duration),
        "kills": kills,
        "router": router,
        "processes": [asdict(t) for t in cluster.tracked],
        "pools": pools,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    d = SoakConfig()
    ap.add_argument("--duration-s", type=float, default=d.duration_s)
    ap.add_argument("--kill-every-s", type=float, default=d.kill_every_s)
    ap.add_argument("--senders", type=int, default=d.senders)
    ap.add_argument("--prefill-workers", type=int, default=d.prefill_workers)
    ap.add_argument("--decode-workers", type=int, default=d.decode_workers)
    ap.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    ap.add_argument("--output-tokens", type=int, default=d.output_tokens)
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args(argv)
    config = SoakConfig(
        args.duration_s,
        args.kill_every_s,
        args.senders,
        args.prefill_workers,
        args.decode_workers,
        args.max_num_seqs,
        args.output_tokens,
    )
    out = Path(args.out)
    result = soak(config, out)
    print()
    print(report(result))
    path = out / "soak.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
