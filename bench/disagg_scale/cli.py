"""`python -m bench.disagg_scale`: see the package docstring."""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from bench.disagg_scale import report
from bench.disagg_scale.hostload import HostLoad
from bench.disagg_scale.split import Split, capacity, demand, plan, targets_at
from bench.disagg_scale.workload import FOREGROUND, Mixed, dilated, scaled
from engine.config import MockTiming
from loadtest.datasets.base import TokenizerLike
from services.autoscaler.capacity import Capacity
from services.autoscaler.sizing import Demand
from services.cluster.launch import Served, start_serve

TOTAL_WORKERS = 16
MODES: dict[str, list[str]] = {
    # Strict disaggregation, as in bench.disagg: with the router's default prefill balance a
    # decode worker prefills any prompt it would start sooner than the prefill pool, and
    # under Poisson bursts that is a quarter or more of the long prompts (the package
    # docstring has the figures). The flag has no meaning colocated: that side is untouched.
    "disagg": ["--mode=disagg", "--no-prefill-balance"],
    "colocated": ["--mode=colocated"],
}
# engine.mock's documented timing, every step 4x as long (see the package docstring).
DEFAULT_TIMING = "speed=0.25"
START_TIMEOUT_S = 300.0  # 16 workers start in 60-140 s on 2 cores
START_ATTEMPTS = 2
ANSWER_TIMEOUT_S = 15.0


def cluster_args(split: Split, timing: str) -> list[str]:
    """The flags both clusters share; colocated runs prefill + decode `both` workers."""
    args = [
        "--no-dashboard",
        "--engine=mock",
        "--cpus-per-worker=0.1",
        f"--prefill-workers={split.prefill}",
        f"--decode-workers={split.decode}",
    ]
    return args + ([f"--mock-timing={timing}"] if timing else [])


def run_mode(
    mode: str, args: list[str], w: Mixed, tok: TokenizerLike, runs: Path
) -> dict[str, Any]:
    from loadtest import run_scenario

    runs.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {mode}: starting {TOTAL_WORKERS} workers", flush=True)
    served = start(runs / f"{mode}-serve.log", [*args, *MODES[mode]])
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {mode}: driving the workload", flush=True)
        with HostLoad() as host:
            res = run_scenario(w.scenario(), served.url, tokenizer=tok, out_dir=runs / mode)
    finally:
        served.proc.stop()
    chats, everything = res.workloads[FOREGROUND], res.overall
    return {
        "itl_p99_ms": chats.itl_ms.p99,
        "itl_median_ms": chats.itl_ms.median,
        "ttft_p99_ms": chats.ttft_ms.p99,
        "output_tok_s": everything.output_throughput,
        "goodput_req_s": chats.request_goodput,
        "failed": everything.failed,
        # chats the time bound cut off; long prompts in flight when the chats were done
        # are cut by design (background) and only counted
        "cancelled": chats.cancelled,
        "long_cut_at_end": res.workloads["long-prompts"].cancelled,
        "chats_completed": chats.completed,
        "long_completed": res.workloads["long-prompts"].completed,
        "duration_s": everything.duration,
        "host_cpu": host.summary(),
        "server_metrics": res.steps[0].server_metrics,
    }


def overridden(w: Mixed, items: list[str]) -> Mixed:
    """`--set long_rate=4`: the workload with those fields changed (same type)."""
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in Mixed.__dataclass_fields__:
            raise SystemExit(f"--set: no workload field {key!r}")
        changes[key] = type(getattr(w, key))(value)
    return replace(w, **changes)


def start(log: Path, args: list[str]) -> Served:
    """`tandem serve`, checked to answer: it prints its banner before its router binds the
    port chosen a minute earlier, and on a busy host another process may have taken that
    port by then (the log says `address already in use`). Then once more, on a new port."""
    for attempt in range(START_ATTEMPTS):
        served = start_serve(log, *args, timeout_s=START_TIMEOUT_S)
        if _answers(served.url):
            return served
        served.proc.stop()
        print(f"tandem serve did not answer (attempt {attempt + 1}); see {log}", flush=True)
    raise RuntimeError(f"tandem serve did not answer after {START_ATTEMPTS} starts: {log}")


def _answers(url: str) -> bool:
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/models", timeout=5.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def tokenizer() -> TokenizerLike:
    from engine.env import default_model_path
    from engine.tokenizer import load_tokenizer
    from services.cluster.models import pull_default

    path = default_model_path()
    return load_tokenizer(path if path.exists() else pull_default())


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--load", type=float, default=1.0, help="scale the rate and concurrency")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a workload field"
    )
    ap.add_argument(
        "--mock-timing", default=DEFAULT_TIMING, help=f"KEY=VALUE,... (default {DEFAULT_TIMING})"
    )
    ap.add_argument("--mode", action="append", choices=list(MODES), help="default: both")
    ap.add_argument("--serve-arg", action="append", default=[], help="to both clusters")
    return ap.parse_args(argv)


def assemble(
    rows: dict[str, dict[str, Any]],
    split: Split,
    cap: Capacity,
    d: Demand,
    timing: MockTiming,
    w: Mixed,
    flags: list[str],
) -> dict[str, Any]:
    """The JSON: both modes, ratios, goal, and what was run (split, timing, workload)."""
    result: dict[str, Any] = {**rows, "ratios": report.ratios(rows["disagg"], rows["colocated"])}
    failed = sum(r["failed"] + r["cancelled"] for r in rows.values())
    result["goal"] = report.goal(result["ratios"], failed)
    result["failed"] = failed
    result["host_bound"] = {m: report.host_bound(r["host_cpu"]) for m, r in rows.items()}
    result["split"] = {
        **asdict(split),
        "demand": asdict(d),
        "capacity": {
            "prefill_tok_s": cap.prefill_tok_s,
            "decode": asdict(cap.decode) if cap.decode else None,
        },
    }
    result["timing"] = asdict(timing)
    result["workload"] = {**asdict(w), "long_prompts": w.long_prompts}
    result["cluster_flags"] = flags
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["machine"] = {
        "cpus": (rows["disagg"]["host_cpu"] or {}).get("cores"),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = Path(args.out)
    timing = MockTiming.parse(args.mock_timing)
    w = dilated(scaled(overridden(Mixed(), args.set), args.load), timing.speed)
    cap = capacity(timing, w.chat_prompt_tokens + w.chat_output / 2)
    d = demand(w, cap)
    split = plan(d, cap, TOTAL_WORKERS, targets_at(timing.speed))
    print(f"mock timing: {timing} (engine.mock's documented costs, every step 1/speed as long)")
    print(f"planner's split: {split.prefill} prefill : {split.decode} decode ({split.reason})")
    print(f"  the fewest workers meeting its targets would be {split.fewest}")
    tok = tokenizer()
    flags = cluster_args(split, args.mock_timing) + args.serve_arg
    rows = {
        mode: run_mode(mode, flags, w, tok, out / "disagg-scale-runs")
        for mode in args.mode or list(MODES)
    }
    if len(rows) < 2:  # one mode: its figures only
        report.write(out / "disagg-scale-partial.json", {**rows, "workload": asdict(w)})
        return
    result = assemble(rows, split, cap, d, timing, w, flags)
    print(report.table(result))
    report.write(out / "disagg-scale.json", result)


if __name__ == "__main__":
    main()
