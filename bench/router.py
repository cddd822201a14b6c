"""`make bench-router`: what the request path costs when the engine costs nothing.

    Redis ── `tandem worker --engine mock` (role both, zero step time)
          └─ `tandem router --mode colocated` on a free port  <── this process: the client

Both are plain child processes (no Ray), so their pids are known and their CPU counters
are their own. First, the same levels run against the stack's floor (bench/router_floor.py:
uvicorn, one grpc.aio stream per request and SSE, with nothing of ours), so each figure of
the router reads against what its stack costs on this machine in the same run.

With `--disaggregated`, the same levels then run through a prefill and a decode worker
(`tandem router --mode disagg --local-prefill-tokens 0`: every prompt prefilled on the
prefill worker, its KV read over NIXL), each process's CPU counted apart: the default
cluster's path.

Each level (bench/router_levels.py) sends a fixed number of streamed /v1/completions
requests (64 random prompt token ids, exactly 8 output tokens) through loadtest's client
from `concurrency` closed-loop senders (each with a connection of its own, opened in the
warm-up), after a short warm-up, and reports:

    TTFT p50 / p99     client side: request sent -> first chunk with text
    req/s              completed requests over the level's wall time
    CPU ms / request   (utime + stime) from /proc/PID/stat, before and after the level,
                       over the requests completed: router, worker, and this client

The client shares the machine's cores with the router and the worker (as in the issue's
figures), so its CPU is reported too, and so is the 1-minute load average after each level:
on a machine busy with other work, every figure here (CPU time included: shared caches
and cores) is inflated, so compare runs made side by side. Bounded: each level stops at
its time cap, and the processes are stopped by pid at the end. Writes bench-results/router.json.

    python -m bench.router [--levels 1:200,16:800,64:1600] [--time-cap-s 120] [--out DIR]
                           [--disaggregated] [--prompt-len 64] [--output-len 8]

`--prompt-len` sends longer prompts (the issue's figures are at 64): what a long prompt
costs the router (its body validated, its blocks hashed, the KV events of its blocks read).
`--output-len` asks for more or fewer tokens (the issue's figures are at 8): two runs at
different lengths split a request's cost into what each token costs (its frame from the
worker, its chunk to the client) and what the request costs once.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.proc_cpu import idle_cpu
from bench.router_floor import FloorProc
from bench.router_levels import OUTPUT_LEN, PROMPT_LEN, WARMUP, Level, parse_levels, run_levels
from bench.router_report import (
    GOAL_ROUTER_CPU_MS,
    GOAL_TTFT_P50_MS_AT_1,
    ISSUE_TODAY,
    against_floor,
    goals,
    table,
)
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.models import pull_default
from services.cluster.redis_server import RedisServer

ZERO_TIMING = (
    "step_ms=0,prefill_ms_per_token=0,decode_ms=0,decode_ms_per_seq=0,decode_ms_per_1k_context=0"
)
LEVELS = ((1, 200), (16, 800), (64, 1600))
IDLE_S = 5.0  # the background CPU of router and worker is measured this long first


# ---- the cluster ----------------------------------------------------------------------
def start_cluster(logs: Path, redis_url: str) -> tuple[Proc, Proc, str]:
    model = pull_default()
    worker, _ = start_worker(
        logs,
        "both-0",
        "both",
        redis_url,
        model,
        "--engine=mock",
        f"--mock-timing={ZERO_TIMING}",
    )
    try:
        router, url = start_router(
            logs / "router.log", redis_url, "--mode=colocated", f"--model={model}"
        )
    except BaseException:
        worker.stop()
        raise
    return worker, router, url


def start_disaggregated(logs: Path, redis_url: str) -> tuple[list[Proc], dict[str, int], str]:
    """A prefill and a decode worker and a router that sends every prompt to the first."""
    model = pull_default()
    procs: list[Proc] = []
    try:
        for role in ("prefill", "decode"):
            worker, _ = start_worker(
                logs,
                f"{role}-0",
                role,
                redis_url,
                model,
                "--engine=mock",
                f"--mock-timing={ZERO_TIMING}",
            )
            procs.append(worker)
        router, url = start_router(
            logs / "router-disagg.log",
            redis_url,
            "--mode=disagg",
            "--local-prefill-tokens=0",
            "--no-prefill-balance",
            f"--model={model}",
        )
        procs.append(router)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    pids = {"router": router.proc.pid, "prefill": procs[0].proc.pid, "decode": procs[1].proc.pid}
    return procs, {**pids, "client": os.getpid()}, url


def measure_floor(
    levels: list[Level], time_cap_s: float, leg: str, output_len: int
) -> list[dict[str, Any]]:
    """The same levels against bench/router_floor.py's front and worker, the two joined by
    gRPC (`leg` "") or by one TCP connection (`leg` "tcp-"); the worker streams
    `output_len` tokens a request."""
    worker = FloorProc(leg + "worker", str(output_len))
    try:
        front = FloorProc(leg + "front", str(worker.port))
        try:
            pids = {"router": front.proc.pid, "worker": worker.proc.pid, "client": os.getpid()}
            url = f"http://127.0.0.1:{front.port}"
            return run_levels(url, levels, pids, time_cap_s, f"{leg}floor")
        finally:
            front.stop()
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--levels", default=",".join(f"{c}:{n}" for c, n in LEVELS))
    ap.add_argument("--time-cap-s", type=float, default=120.0, help="per level")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument(
        "--disaggregated",
        action="store_true",
        help="also run the levels through a prefill and a decode worker",
    )
    ap.add_argument("--prompt-len", type=int, default=PROMPT_LEN, help="token ids a prompt")
    ap.add_argument("--output-len", type=int, default=OUTPUT_LEN, help="tokens a request")
    args = ap.parse_args(argv)
    if args.prompt_len < 1 or args.output_len < 1:
        ap.error("--prompt-len and --output-len must be at least 1")
    levels = [
        replace(level, prompt_len=args.prompt_len, output_len=args.output_len)
        for level in parse_levels(args.levels)
    ]
    out = Path(args.out)
    logs = out / "router-runs"
    logs.mkdir(parents=True, exist_ok=True)
    floor = measure_floor(levels, args.time_cap_s, "", args.output_len)
    tcp_floor = measure_floor(levels, args.time_cap_s, "tcp-", args.output_len)
    idle: dict[str, float] = {}
    with RedisServer() as redis_server:
        worker, router, url = start_cluster(logs, redis_server.url)
        pids = {"router": router.proc.pid, "worker": worker.proc.pid, "client": os.getpid()}
        try:
            idle = idle_cpu({k: pids[k] for k in ("router", "worker")}, IDLE_S)
            rows = run_levels(url, levels, pids, args.time_cap_s, "tandem")
        finally:
            router.stop()
            worker.stop()
        disagg: list[dict[str, Any]] = []
        if args.disaggregated:
            procs, disagg_pids, disagg_url = start_disaggregated(logs, redis_server.url)
            try:
                disagg = run_levels(disagg_url, levels, disagg_pids, args.time_cap_s, "disagg")
            finally:
                for proc in procs:
                    proc.stop()
    against_floor(rows, floor)
    print()
    print("the floor (bench/router_floor.py: uvicorn + one grpc.aio stream a request + SSE):")
    print(table(floor))
    print("the same floor with one TCP connection per front for all requests, in gRPC's place:")
    print(table(tcp_floor))
    print("tandem router + mock worker:")
    print(table(rows, with_floor=True))
    if disagg:
        print("tandem router + a mock prefill and a mock decode worker (every prompt remote):")
        print(table(disagg, procs=("router", "prefill", "decode", "client")))
    print()
    if (args.prompt_len, args.output_len) == (PROMPT_LEN, OUTPUT_LEN):
        for line in goals(rows, floor, tcp_floor):
            print(line)
    else:  # the issue's goals are a 64-token prompt's with 8 tokens out
        print(f"no goal judged: the goals are for {PROMPT_LEN}-token prompts, {OUTPUT_LEN} out")
    print(
        "with no request running: "
        + ", ".join(f"{name} {ms:.1f} CPU ms/s" for name, ms in idle.items())
        + " (counted in the figures above)"
    )
    result = {
        "setup": {
            "router": "tandem router --mode colocated (own process)",
            "worker": f"tandem worker --engine mock --mock-timing {ZERO_TIMING}",
            "floor": "bench/router_floor.py front + worker (own processes)",
            "tcp_floor": "bench/router_floor.py tcp-front + tcp-worker (own processes)",
            "prompt_len": args.prompt_len,
            "output_len": args.output_len,
            "warmup_requests": WARMUP,
            "cpus": os.cpu_count(),
        },
        "idle_cpu_ms_per_s": idle,
        "rows": rows,
        "floor_rows": floor,
        "tcp_floor_rows": tcp_floor,
        "disaggregated_rows": disagg,
        "goals": {
            "router_cpu_ms_per_req": GOAL_ROUTER_CPU_MS,
            "ttft_p50_ms_at_1": GOAL_TTFT_P50_MS_AT_1,
        },
        "issue_today": ISSUE_TODAY,
    }
    path = out / "router.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
