"""Where one forward pass's time goes: decode steps at batch 1 and 32 over a ~256-token
context, and prefills of 256 and 2,048 tokens, under torch's profiler.

    python -m bench.profile_step [--dtype auto] [--threads 2]   (make bench-profile)

Each case runs in turn in this process: with the torch reference elementwise ops
(`TorchOps`: norms, RoPE and the MLP activation op by op, as before our fused kernels) and
with `NativeOps` (torch.ops.tandem.*), both on F.linear; and NativeOps with the GEMMs the
engine chose at start-up ("engine": oneDNN, bf16 panels, GGUF blocks). Time is grouped
by what the operator is: GEMMs, attention (our paged kernels, SDPA and the cache writes),
elementwise, and the rest (Python and dispatch overhead: wall time no operator accounts
for). Writes bench-results/profile.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from engine.attention import BatchLayout, SeqSlice
from engine.config import CacheConfig, EngineConfig
from engine.engine import Engine
from engine.model.ops import NativeOps, TorchOps
from engine.runner import ModelRunner

GEMM = ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "aten::bmm",
        "tandem::quant_linear", "tandem::bf16_panel_linear",
        "mkldnn::_linear_pointwise")  # fmt: skip
# prefixes: SDPA's CPU kernels have several names; index_select / index_put are the
# gathers and cache writes of the reference attention path
ATTENTION = ("tandem::paged_decode", "tandem::paged_prefill", "tandem::write_kv",
             "aten::_scaled_dot_product",
             "aten::scaled_dot_product", "aten::index_select", "aten::index_put")  # fmt: skip
ELEMENTWISE = (
    "tandem::add_rms_norm", "tandem::rope", "tandem::silu_and_mul", "aten::mul", "aten::add",
    "aten::pow", "aten::mean", "aten::rsqrt", "aten::to", "aten::cat", "aten::neg",
    "aten::silu", "aten::cos", "aten::sin", "aten::embedding",
)  # fmt: skip


def forward_case(engine: Engine, seqs: tuple[SeqSlice, ...], n_tokens: int) -> Callable[[], None]:
    """One forward pass of the engine's model over `seqs`, logits for the last rows only."""
    runner = cast(ModelRunner, engine.runner)
    model = runner.model
    rng = random.Random(0)
    ids = torch.tensor([rng.randrange(100, 40000) for _ in range(n_tokens)])
    pos = torch.tensor([p for s in seqs for p in range(s.context_len - s.query_len, s.context_len)])
    last = torch.tensor([s.query_start + s.query_len - 1 for s in seqs])
    keep = None if len(seqs) == n_tokens else last  # as the runner asks for them

    @torch.inference_mode()
    def run() -> None:
        runner.attn.prepare(BatchLayout(seqs, n_tokens))
        model.logits(model(ids, pos, runner.attn, keep))

    return run


def cases(engine: Engine) -> dict[str, Callable[[], None]]:
    bs = engine.block_size

    def decode(batch: int, ctx: int) -> Callable[[], None]:
        per = -(-ctx // bs)
        seqs = tuple(
            SeqSlice(i, 1, ctx, tuple(range(i * per, (i + 1) * per))) for i in range(batch)
        )
        return forward_case(engine, seqs, batch)

    def prefill(n: int) -> Callable[[], None]:
        base = 40 * (-(-256 // bs))  # past the decode cases' blocks
        return forward_case(engine, (SeqSlice(0, n, n, tuple(range(base, base + n // bs + 1))),), n)

    return {
        "decode batch 1": decode(1, 257),
        "decode batch 32": decode(32, 257),
        "prefill 256": prefill(256),
        "prefill 2048": prefill(2048),
    }


def profiled(run: Callable[[], None], reps: int) -> dict[str, float]:
    """Milliseconds per pass by group, from the fastest of `reps` profiled passes."""
    run()  # warm-up
    best: dict[str, float] | None = None
    for _ in range(reps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run()
            wall = (time.perf_counter() - start) * 1000
        groups = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0}
        for ev in prof.key_averages():
            for name, keys in (
                ("gemm", GEMM),
                ("attention", ATTENTION),
                ("elementwise", ELEMENTWISE),
            ):
                # names, or prefixes of them (SDPA); the first group wins ("aten::add"
                # is a prefix of GEMM's "aten::addmm")
                if ev.key.startswith(keys):
                    groups[name] += ev.self_cpu_time_total / 1000
                    break
        groups["other"] = max(0.0, wall - sum(groups.values()))
        groups["total"] = wall
        if best is None or wall < best["total"]:
            best = groups
    assert best is not None
    return best


def variants(engine_linear: Callable[..., torch.Tensor]) -> list[tuple[str, TorchOps]]:
    """The reference ops and ours, both on F.linear; and ours with the GEMMs the engine
    chose at start-up ("engine": oneDNN on packed weights, bf16 panels or a GGUF's blocks
    for small batches; engine/model/choose.py), where it chose other than F.linear."""
    out: list[tuple[str, TorchOps]] = [("torch", TorchOps()), ("native", NativeOps())]
    if engine_linear is not F.linear:
        chosen = NativeOps()
        chosen.linear = engine_linear
        out.append(("engine", chosen))
    return out


def main(argv: list[str] | None = None) -> None:
    from engine.env import default_model_path

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="auto", help="auto: what the engine picks here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="bench-results/profile.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or str(default_model_path())
    engine = Engine(
        EngineConfig(model=model, dtype=args.dtype, num_threads=args.threads,
                     cache=CacheConfig(num_blocks=4096)),
        load_tokenizer_files=False,
    )  # fmt: skip
    runner = cast(ModelRunner, engine.runner)
    # A fresh cache is untouched zero pages, slower to read than a written one (measured:
    # 2x for the decode kernel); a serving worker's cache has been written.
    runner.kv_cache.normal_(0.0, 0.5)
    mdl = runner.model
    print(f"model={Path(model).name} dtype={engine.dtype} threads={args.threads}  (ms per pass)")
    print(
        f"{'case':<16} {'ops':<7} {'total':>8} {'gemm':>8} {'attn':>8} {'elemwise':>9} {'other':>8}"
    )
    rows = []
    for name, run in cases(engine).items():
        for label, ops in variants(mdl.ops.linear):
            mdl.ops = ops
            g = profiled(run, args.reps)
            rows.append({"case": name, "ops": label, **{k: round(v, 2) for k, v in g.items()}})
            print(
                f"{name:<16} {label:<7} {g['total']:>8.1f} {g['gemm']:>8.1f} "
                f"{g['attention']:>8.1f} {g['elementwise']:>9.1f} {g['other']:>8.1f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": Path(model).name, "dtype": str(engine.dtype), "threads": args.threads}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
