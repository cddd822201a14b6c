"""`python -m bench.routing [--quick] [--no-real] [--only-index]`: see the package
docstring for what is measured and why these numbers."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.results import print_goals, write
from bench.routing import report
from bench.routing.clusters import MODES, ClusterSpec, run_mode
from bench.routing.drive import Limits
from bench.routing.oracle import oracle_hit_rate, pooled_lru_hit_rate
from bench.routing.workloads import ChatConfig, Workload, chat_workload
from bench.routing.workloads import mooncake_workload as replay
from engine.config import MockTiming
from loadtest.datasets.base import TokenizerLike
from loadtest.datasets.mooncake_synth import SynthConfig, synth_trace, write_trace

MOCK_TIMING = "prefill_ms_per_token=2.0"  # 20x engine.mock's default: see the docstring


@dataclass(frozen=True, slots=True)
class Preset:
    chat: ChatConfig
    trace: SynthConfig
    real: ChatConfig
    mock: ClusterSpec = ClusterSpec(num_blocks=4096, mock_timing=MOCK_TIMING)
    # The real model: 2 prefill + 1 decode worker on 2 cores, one thread each.
    real_cluster: ClusterSpec = ClusterSpec(
        engine="model", prefill_workers=2, decode_workers=1, num_blocks=None, cpus_per_worker=0.6
    )


FULL = Preset(
    chat=ChatConfig(rate=4.0, conversations=180),
    trace=SynthConfig(requests=360, rate=1.6),
    real=ChatConfig(
        rate=0.3,
        conversations=12,
        system_prompts=2,
        system_len=(280, 320),
        turns=(2, 4),
        user_len=(30, 90),
        reply_len=(60, 120),
        output_len=8,
        think_s=1.0,
    ),
)
QUICK = Preset(
    chat=replace(FULL.chat, conversations=50),
    trace=replace(FULL.trace, requests=80),
    real=replace(FULL.real, conversations=4, turns=(2, 3)),
)


def scaled(p: Preset, load: float) -> Preset:
    return replace(
        p,
        chat=replace(p.chat, rate=p.chat.rate * load),
        trace=replace(p.trace, rate=p.trace.rate * load),
        real=replace(p.real, rate=p.real.rate * load),
    )


def mock_workloads(p: Preset, tok: TokenizerLike, runs: Path) -> list[Workload]:
    trace = write_trace(synth_trace(p.trace), runs / "mooncake-trace.jsonl")
    params = {**asdict(p.trace), "trace": str(trace)}
    return [chat_workload(p.chat, tok), replay(trace, tok, p.trace.seed, params)]


def compare(
    w: Workload, spec: ClusterSpec, modes: list[str], tok: TokenizerLike, runs: Path
) -> dict[str, Any]:
    """Every mode on a fresh cluster of the same spec, one after another."""
    span = max(c.at + sum(t.think_s for t in c.turns) for c in w.conversations)
    limits = Limits(request_timeout_s=180.0, max_duration_s=span + 180.0)
    prompts, pool = w.prompts_in_order(), spec.prefill_workers * (spec.num_blocks or 0)
    lru = pooled_lru_hit_rate(prompts, spec.block_size, pool) if pool else None
    out: dict[str, Any] = {
        "oracle_hit_rate": oracle_hit_rate(prompts, spec.block_size),
        "pooled_lru_hit_rate": lru,
        "workload": w.summary(),
        "cluster": asdict(spec),
        "modes": {},
    }
    for mode in modes:
        print(f"[{time.strftime('%H:%M:%S')}] {w.name} / {spec.engine} / {mode} ...", flush=True)
        m = run_mode(spec, mode, w, tok, limits, runs)
        m["prefill_busy"] = prefill_busy(spec, m)
        known = m["routed_cached_blocks"] * spec.block_size  # tokens the index promised
        m["index_hit_rate"] = known / m["prompt_tokens"] if m["prompt_tokens"] else None
        out["modes"][mode] = m
    report.add_ratios(out)
    return out


def prefill_busy(spec: ClusterSpec, m: dict[str, Any]) -> float | None:
    """The modelled share of the prefill pool's time spent computing uncached tokens
    (mock only: the timing model says how long a token takes)."""
    if spec.engine != "mock" or not m["duration_s"]:
        return None
    t = MockTiming.parse(spec.mock_timing)
    ms_per_token = t.prefill_ms_per_token / t.speed
    uncached = m["prompt_tokens"] - m["cached_prompt_tokens"]
    return uncached * ms_per_token / 1000 / m["duration_s"] / spec.prefill_workers


def index_figures() -> dict[str, Any]:
    try:
        from bench import kv_index as bench
    except ImportError as e:
        return {"error": f"bench.kv_index is missing: {e}"}
    return dict(bench.run())


def tokenizer() -> TokenizerLike:
    from engine.env import default_model_path
    from engine.tokenizer import load_tokenizer
    from services.cluster.models import pull_default

    path = default_model_path()
    return load_tokenizer(path if path.exists() else pull_default())


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small workloads: a smoke run")
    ap.add_argument("--no-real", action="store_true", help="skip the real-model comparison")
    ap.add_argument("--only-index", action="store_true", help="only the KV index benchmark")
    ap.add_argument("--mode", action="append", choices=MODES, help="default: all three")
    ap.add_argument("--workload", action="append", choices=["chat", "mooncake", "real-chat"])
    ap.add_argument(
        "--load", type=float, default=1.0, help="scale every arrival rate (2: twice as busy)"
    )
    ap.add_argument("--out", default="bench-results")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = Path(args.out)
    path = out / "routing.json"
    if args.only_index:  # keeps the workloads of the last full run
        last = json.loads(path.read_text()) if path.exists() else {"workloads": {}}
        last["index"] = index_figures()
        print(json.dumps(last["index"], indent=2))
        write(path, last)
        return
    preset = scaled(QUICK if args.quick else FULL, args.load)
    modes = args.mode or list(MODES)
    wanted = set(args.workload or ["chat", "mooncake", "real-chat"])
    runs = out / "routing-runs"
    tok = tokenizer()
    result: dict[str, Any] = {"workloads": {}, "index": index_figures()}
    for w in mock_workloads(preset, tok, runs):
        if w.name in wanted:
            result["workloads"][w.name] = compare(w, preset.mock, modes, tok, runs)
    if not args.no_real and "real-chat" in wanted:
        w = replace(chat_workload(preset.real, tok), name="real-chat")
        result["workloads"][w.name] = compare(w, preset.real_cluster, modes, tok, runs)
    for name, w in result["workloads"].items():
        report.print_workload(name, w)
    result["goals"] = report.goals(
        {k: v for k, v in result["workloads"].items() if v["cluster"]["engine"] == "mock"}
    )
    print_goals("kv", result["goals"])
    result["config"] = {
        "quick": args.quick,
        "load": args.load,
        "modes": modes,
        "preset": asdict(preset),
    }
    write(path, result)
