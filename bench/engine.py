"""Offline throughput: the engine against transformers `generate()` on the same weights.

    python -m bench.engine [--model PATH] [--concurrency 1,8,32] [--output-len 64] [--rounds 3]

Both run in this process, taking turns (--rounds times a level; the figures are each
side's median, every round kept in the JSON), at the same dtype and thread count, on the
same random prompts (lengths within +-10% of --input-len), generating exactly
--output-len tokens each (EOS ignored). Throughput counts output tokens over wall time,
prefill included. Rounds exist because transformers' figure moves ~10% between single
runs on these shared VMs (docs/benchmarks.md), more than ours does. Beside them, the
machine's GEMM-only bound for the same work (bench/serve/roofline.py: the model's GEMMs
alone, F.linear, oneDNN or our bf16 panels, whichever is faster, in the engine's dtype).
Goal (issue 11): the engine >= 2x transformers at 1 and at 32. Writes
bench-results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.sampling_params import SamplingParams


def make_prompts(n: int, input_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lo, hi = int(input_len * 0.9), int(input_len * 1.1)
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def run_engine(engine: Engine, prompts: list[list[int]], output_len: int) -> float:
    """Seconds to generate `output_len` tokens for every prompt, from a cold cache."""
    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    engine.pool.reset_cache()  # no prefix hits from an earlier run
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(r.token_ids) == output_len for r in results)
    return elapsed


@torch.inference_mode()
def run_hf(model, prompts: list[list[int]], output_len: int, pad_id: int) -> float:
    width = max(len(p) for p in prompts)
    # Left padding, as transformers expects for batched generation.
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts]).to(model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]).to(ids.device)
    start = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
        pad_token_id=pad_id,
    )
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - width == output_len
    return len(prompts) * output_len / elapsed


def load_hf(model_path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    p = Path(model_path)
    if p.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(
            str(p.parent), gguf_file=p.name, dtype=dtype
        ).eval()
    return AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype).eval()


def gemm_bound(
    model_path: str, dtype: str, levels: list[int], args: argparse.Namespace
) -> dict[int, float]:
    """Output tok/s if only the GEMMs took time, per concurrency (all requests at once)."""
    from bench.serve.roofline import measure, pick_faster

    timed = measure(Path(model_path), args.input_len, levels, args.threads)
    ours = [t for t in timed if t.dtype == dtype]
    run = {n: n for n in levels}
    return pick_faster(ours, run, args.output_len).bound(run, args.output_len)


def main(argv: list[str] | None = None) -> None:
    from engine.env import default_model_path

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model path (default: the pulled default model)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", help="auto measures which is faster here")
    ap.add_argument("--rounds", type=int, default=3, help="turns each side takes a level")
    ap.add_argument("--out", default="bench-results/engine.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_path = args.model or str(default_model_path())
    levels = [int(x) for x in args.concurrency.split(",")]
    engine = Engine(
        EngineConfig(
            model=model_path,
            dtype=args.dtype,
            num_threads=args.threads,
            cache=CacheConfig(kv_cache_gb=2.0),
            scheduler=SchedulerConfig(max_num_seqs=max(levels), max_num_batched_tokens=2048),
        ),
        load_tokenizer_files=False,
    )
    hf = load_hf(model_path, engine.dtype)
    vocab = engine.model_config.vocab_size
    run_engine(engine, make_prompts(2, 32, vocab, seed=99), 4)  # warm-up, both sides
    run_hf(hf, make_prompts(2, 32, vocab, seed=99), 4, pad_id=0)
    bound = gemm_bound(model_path, str(engine.dtype).removeprefix("torch."), levels, args)
    rows = []
    print(
        f"model={Path(model_path).name} dtype={engine.dtype} threads={args.threads} "
        f"input~{args.input_len} output={args.output_len}"
    )
    # prefill s: the engine's time for the prompts alone (one output token each), a floor
    # under the whole run's time at that concurrency.
    print(
        f"{'concurrency':>11} {'engine tok/s':>13} {'hf tok/s':>9} {'ratio':>6} "
        f"{'bound tok/s':>12} {'of bound':>9} {'prefill s':>10}"
    )
    for n in levels:
        prompts = make_prompts(n, args.input_len, vocab, seed=n)
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(n * args.output_len / run_engine(engine, prompts, args.output_len))
            theirs.append(run_hf(hf, prompts, args.output_len, pad_id=0))
        e, h = statistics.median(ours), statistics.median(theirs)
        prefill = run_engine(engine, prompts, 1)
        rows.append(
            {
                "concurrency": n,
                "engine_tok_s": round(e, 2),
                "hf_tok_s": round(h, 2),
                "ratio": round(e / h, 2),
                "gemm_bound_tok_s": round(bound[n], 2),
                "of_bound": round(e / bound[n], 2),
                "engine_prefill_s": round(prefill, 2),
                "engine_rounds_tok_s": [round(x, 2) for x in ours],
                "hf_rounds_tok_s": [round(x, 2) for x in theirs],
            }
        )
        print(
            f"{n:>11} {e:>13.1f} {h:>9.1f} {e / h:>5.2f}x {bound[n]:>12.1f} "
            f"{e / bound[n]:>8.2f}x {prefill:>10.1f}   rounds: "
            f"{' / '.join(f'{x:.1f}' for x in ours)} against "
            f"{' / '.join(f'{x:.1f}' for x in theirs)}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": Path(model_path).name,
        "dtype": str(engine.dtype),
        "threads": args.threads,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rounds": args.rounds,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
