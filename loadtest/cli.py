"""`python -m loadtest run|scenario|compare` (and `tandem bench`, through `main(argv)`).

`run` turns its flags into a one-workload scenario (the same dict a scenario file gives),
so a command line and a file mean exactly the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtest.config import DATASETS, ENDPOINTS
from loadtest.scenario_file import builtin_scenarios, scenario_from_dict

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_OUT = "bench-results/loadtest"

# `run` flags that become scenario keys as they are (dashes to underscores).
_WORKLOAD_FLAGS: dict[str, dict[str, Any]] = {
    "--endpoint": {"choices": ENDPOINTS, "help": "default: completions"},
    "--dataset": {"choices": DATASETS, "help": "default: random"},
    "--dataset-path": {"help": "the mooncake trace (JSONL) or sharegpt file (JSON)"},
    "--num-prompts": {"type": int, "help": "requests (multi-turn: conversations); default 100"},
    "--input-len": {"type": int, "help": "prompt tokens (shared-prefix: the suffix); 256"},
    "--output-len": {"type": int, "help": "generated tokens; default 128"},
    "--range-ratio": {"type": float, "help": "lengths vary by +-this fraction; default 0"},
    "--num-prefixes": {"type": int, "help": "shared-prefix: distinct prefixes; default 4"},
    "--prefix-len": {"type": int, "help": "shared-prefix: prefix tokens; default 512"},
    "--suffixes-per-prefix": {"type": int, "help": "shared-prefix: default 8"},
    "--turns": {"type": int, "help": "multi-turn: turns per conversation; default 3"},
    "--time-scale": {"type": float, "help": "mooncake: multiply trace times; default 1"},
    "--concurrency": {"help": "most requests in flight, e.g. 1,2,4 (a list sweeps); none"},
    "--request-rate": {"help": "requests per second, inf = all at once (a list sweeps); inf"},
    "--arrival": {"choices": ("poisson", "gamma"), "help": "inter-arrival times; poisson"},
    "--burstiness": {"type": float, "help": "gamma shape (1 = Poisson, <1 burstier)"},
    "--warmup": {"type": int, "help": "requests sent first and left out of the figures"},
    "--ignore-eos": {
        "action": argparse.BooleanOptionalAction,
        "help": "fixed output lengths (vLLM's ignore_eos + min_tokens); default on",
    },
    "--temperature": {"type": float, "help": "default 0"},
    "--text-prompts": {
        "action": "store_true",
        "default": None,
        "help": "send text to /v1/completions instead of token ids",
    },
    "--extra-body": {"type": json.loads, "help": "JSON merged into every request body"},
    "--goodput": {"nargs": "+", "metavar": "NAME:MS", "help": "SLOs: ttft:500 tpot:50 e2el:MS"},
    "--seed": {"type": int, "help": "default 0"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description="Load generator for OpenAI-compatible servers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one workload, or a sweep over concurrencies or rates")
    _target_flags(run)
    for flag, kwargs in _WORKLOAD_FLAGS.items():
        run.add_argument(flag, **kwargs)
    run.add_argument("--max-duration", type=float, help="seconds per sweep point; 600")
    run.add_argument("--request-timeout", type=float, help="seconds per request; 300")
    scen = sub.add_parser("scenario", help="run a scenario file (built in: see NAME_OR_PATH)")
    scen.add_argument("name_or_path", help=f"a .toml/.json file or one of {builtin_scenarios()}")
    _target_flags(scen)
    scen.add_argument("--max-duration", type=float, help="override the scenario's")
    cmp = sub.add_parser("compare", help="two result files side by side, with B/A ratios")
    cmp.add_argument("a")
    cmp.add_argument("b")
    return parser


def _target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL; {DEFAULT_URL}")
    p.add_argument("--model", help="default: the first model the server lists")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--tokenizer", help="model dir, tokenizer.json or .gguf (tandem bench: SmolLM2)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"result folder; {DEFAULT_OUT}")
    p.add_argument("--label", help="name of the run in files and tables (e.g. disagg)")
    p.add_argument(
        "--scrape-metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="diff the server's /metrics around each step (when it has one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        from loadtest.compare import compare_files

        try:
            print(compare_files(args.a, args.b))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from loadtest.report import markdown_table
    from loadtest.scenario import run_scenario
    from loadtest.scenario_file import load_scenario

    try:
        if args.command == "run":
            cfg = scenario_from_dict(_run_dict(args), default_name=args.dataset or "random")
        else:
            cfg = load_scenario(args.name_or_path)
        if args.max_duration is not None:
            from dataclasses import replace

            cfg = replace(cfg, max_duration=args.max_duration)
        result = run_scenario(
            cfg,
            args.url,
            api_key=args.api_key,
            model=args.model,
            out_dir=args.out,
            label=args.label,
            tokenizer=args.tokenizer,
            quiet=args.quiet,
            scrape_metrics=args.scrape_metrics,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    if result.files:
        print(f"wrote {len(result.files)} files to {Path(args.out)}", file=sys.stderr)
    failed = sum(r.failed for s in result.steps for r in s.workloads.values())
    completed = sum(r.completed for s in result.steps for r in s.workloads.values())
    return 1 if completed == 0 and failed > 0 else 0


def _run_dict(args: argparse.Namespace) -> dict[str, Any]:
    keys = [f.lstrip("-").replace("-", "_") for f in _WORKLOAD_FLAGS]
    d = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.request_timeout is not None:
        d["request_timeout"] = args.request_timeout
    return d
