"""`make bench-serve`: the run, one system after another on the same machine."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.serve import report, roofline, vllm_env
from services.cluster.launch import start_serve

# What `tandem serve` runs for each Tandem system. The README recommends no single-node
# configuration yet; "recommended" is one worker with both roles on both cores.
TANDEM: dict[str, list[str]] = {
    "tandem-default": [],
    "tandem-recommended": [
        "--mode=colocated",
        "--prefill-workers=0",
        "--decode-workers=1",
        "--cpus-per-worker=2",
    ],
}
INPUT_LEN, OUTPUT_LEN = 256, 64


def scenario(
    concurrency: int, requests: int, max_duration: float, warmup: int = 2
) -> dict[str, Any]:
    """One load level: its own seed (a level never finds another's prompts cached), the
    same for every system."""
    return {
        "name": f"serve-c{concurrency}",
        "max_duration": max_duration,
        "request_timeout": max_duration,
        "dataset": "random",
        "endpoint": "completions",
        "input_len": INPUT_LEN,
        "range_ratio": 0.0,
        "output_len": OUTPUT_LEN,
        "num_prompts": requests,
        "concurrency": concurrency,
        "ignore_eos": True,
        "warmup": warmup,
        "seed": 1000 + concurrency,
    }


def drive(system: str, url: str, levels: dict[int, int], args: Any) -> list[dict[str, Any]]:
    from loadtest import run_scenario

    rows = []
    for c, n in levels.items():
        print(f"{system}: concurrency {c}, {n} requests", flush=True)
        res = run_scenario(
            scenario(c, n, args.max_duration, args.warmup),
            url,
            tokenizer=str(args.model),
            out_dir=args.out / "serve-runs" / system,
            label=f"{system}-c{c}",
            scrape_metrics=False,
        )
        rows.append(report.row(system, c, res.overall))
        print(f"  {rows[-1]}", flush=True)
    return rows


def run_system(
    system: str,
    start: Callable[[], tuple[str, Callable[[], None]]],
    levels: dict[int, int],
    args: Any,
) -> list[dict[str, Any]]:
    """A server started, every level driven, the server stopped; a failure fills the rows
    it left with its error."""
    rows: list[dict[str, Any]] = []
    try:
        url, stop = start()
        try:
            rows = drive(system, url, levels, args)
        finally:
            stop()
    except Exception as e:  # noqa: BLE001 - recorded in the rows and printed
        print(f"{system} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        done = {r["concurrency"] for r in rows}
        rows += [
            report.failed_row(system, c, n, f"{type(e).__name__}: {e}")
            for c, n in levels.items()
            if c not in done
        ]
    return rows


def start_vllm(args: Any) -> tuple[str, Callable[[], None]]:
    root = args.venvs
    root.mkdir(parents=True, exist_ok=True)
    py = vllm_env.ensure_venv(root / "vllm", root / "vllm-install.log")
    folder = root / "models" / args.model.stem.split(".")[0]
    vllm_env.convert_model(args.model, folder, root / "convert.log")
    logs = args.out / "serve-runs"
    log = logs / "vllm-server.log"
    server = vllm_env.Server(py, folder, log, args.cpus, args.kv_gib, args.vllm_dtype)
    print(f"vLLM on {server.url}, preloaded: {server.preloaded}", flush=True)
    try:
        server.wait_ready(args.ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server.url, server.stop


def start_tandem(system: str, args: Any) -> tuple[str, Callable[[], None]]:
    logs = args.out / "serve-runs"
    served = start_serve(logs / f"{system}-serve.log", "--no-dashboard", *TANDEM[system])

    def stop() -> None:
        served.proc.stop()

    return served.url, stop


def starter(system: str, args: Any) -> Callable[[], tuple[str, Callable[[], None]]]:
    if system == "vllm":
        return lambda: start_vllm(args)
    if system in TANDEM:
        return lambda: start_tandem(system, args)
    raise SystemExit(f"unknown system {system!r}; known: {', '.join(report.SYSTEMS)}")


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni", "fma")
    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cpus": fields.get("CPU(s)", "").strip(),
        "flags": [f for f in wanted if f in flags],
    }


def main(argv: list[str] | None = None) -> None:
    from engine.model.gemm import has_bf16_arithmetic
    from services.cluster.models import pull_default

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--venvs", type=Path, default=Path(".bench-venvs"))
    ap.add_argument("--levels", default="1:8,16:64,32:96", help="concurrency:requests,...")
    ap.add_argument("--max-duration", type=float, default=300.0, help="seconds per level")
    ap.add_argument("--ready-timeout", type=float, default=1500.0, help="seconds for vLLM")
    ap.add_argument("--warmup", type=int, default=2, help="requests per level left out")
    ap.add_argument("--systems", default=",".join(report.SYSTEMS))
    ap.add_argument("--cpus", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    ap.add_argument(
        "--vllm-dtype",
        default="auto",
        help="vLLM's --dtype; auto: bfloat16 where the CPU has bfloat16 arithmetic "
        "(AVX512_BF16 or AMX), else float32 (vLLM's faster dtype there, as Tandem picks)",
    )
    ap.add_argument("--kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, the order reversed each round; each figure "
        "is then the median over the rounds (this VM moves ~15%% between runs)",
    )
    args = ap.parse_args(argv)
    args.model = Path(pull_default())
    if args.vllm_dtype == "auto":
        args.vllm_dtype = "bfloat16" if has_bf16_arithmetic() else "float32"
    levels = {int(c): int(n) for c, n in (p.split(":") for p in args.levels.split(","))}
    (args.out / "serve-runs").mkdir(parents=True, exist_ok=True)

    print("GEMM-only bound: timing each GEMM kernel on the model's shapes", flush=True)
    times = roofline.measure(
        args.model, INPUT_LEN, [roofline.batch_seen(c, n) for c, n in levels.items()], reps=3
    )
    best = roofline.pick_faster(times, levels, OUTPUT_LEN)
    bound = {str(c): v for c, v in best.bound(levels, OUTPUT_LEN).items()}

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": str(args.model),
        "workload": {"input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "levels": levels},
        "limits": {"max_duration_s": args.max_duration, "warmup": args.warmup},
        "vllm": {
            "spec": vllm_env.VLLM_SPEC,
            "torch": vllm_env.TORCH_SPEC,
            "dtype": args.vllm_dtype,
        },
        "tandem_args": TANDEM,
        "roofline": {
            "dtype": best.dtype,
            "kernel": best.kernel,
            "gemm_s": {
                t.label: {"prefill": t.prefill_s, "decode_step": t.decode_step_s} for t in times
            },
        },
    }
    path = args.out / "serve.json"
    systems = args.systems.split(",")
    rounds: list[list[dict[str, Any]]] = []
    for r in range(args.rounds):
        rounds.append([])
        for system in systems if r % 2 == 0 else systems[::-1]:
            rounds[-1] += run_system(system, starter(system, args), levels, args)
            # after each system: a later failure keeps these
            write(path, meta, report.combine(rounds), bound, rounds)
    rows = report.combine(rounds)
    if args.rounds > 1:
        for r, each in enumerate(rounds):
            print(f"round {r + 1}:\n{report.table(each, bound)}")
        print(f"the median of {args.rounds} rounds:")
    print(report.table(rows, bound))
    print(f"(GEMM-only bound: {best.label}, the fastest of {', '.join(t.label for t in times)})")
    for g in report.check_goals(rows):
        print(g.line())
    print(f"wrote {path}")


def write(
    path: Path,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    bound: dict[str, float],
    rounds: list[list[dict[str, Any]]],
) -> None:
    """serve.json: `rows` (the medians over the rounds), the goals on them, and every
    round's own rows."""
    goals = [{"goal": g.line(), "met": g.met} for g in report.check_goals(rows)]
    result = {
        "meta": meta,
        "rows": rows,
        "roofline_tok_s": bound,
        "goals": goals,
        "rounds": rounds,
    }
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
