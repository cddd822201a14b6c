"""The decode step on a GPU: replayed from CUDA graphs (engine/cuda_graph.py) against the
same engine run eagerly, and transformers' generate(), in one process on one model.

    python -m bench.cuda_graph [--concurrency 1,32,128] [--input-len 256] [--output-len 64]

The model has SmolLM2-135M-Instruct's shapes with random weights, in bfloat16 (the GGUF
is not carried to a GPU machine; the shapes set the cost). Same prompts for all three,
exactly --output-len tokens each; throughput counts output tokens over wall time, prefill
included. Needs CUDA and flashinfer. Writes bench-results/cuda_graph.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.engine import load_hf, make_prompts, run_engine, run_hf
from bench.results import write
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import Engine

# SmolLM2-135M-Instruct's config.json, the fields that set the cost
VOCAB = 49152
SMOLLM2_SHAPES: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": VOCAB,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


def smollm2_shaped(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPES)).bfloat16()
    model.save_pretrained(path)
    return path


def engine_for(path: Path, eager: bool, max_seqs: int) -> Engine:
    cfg = EngineConfig(
        model=str(path),
        dtype="bfloat16",
        device="cuda",
        enforce_eager=eager,
        cache=CacheConfig(num_blocks=8192),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=8192),
    )
    engine = Engine(cfg, load_tokenizer_files=False)
    run_engine(engine, make_prompts(2, 32, VOCAB, seed=99), 4)  # warm
    return engine


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--out", default="bench-results/cuda_graph.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.cuda_graph needs a CUDA device")
    levels = [int(x) for x in args.concurrency.split(",")]
    path = smollm2_shaped(Path(tempfile.mkdtemp()) / "smollm2-shaped")
    eager = engine_for(path, eager=True, max_seqs=max(levels))
    graphs = engine_for(path, eager=False, max_seqs=max(levels))
    compiled = graphs.runner.compiled  # type: ignore[attr-defined]
    hf = load_hf(str(path), torch.bfloat16).to("cuda")
    run_hf(hf, make_prompts(2, 32, VOCAB, seed=99), 4, pad_id=0)
    print(
        f"{torch.cuda.get_device_name()}; graphs for {compiled.sizes} in {compiled.startup_s:.1f} s"
    )
    print(
        f"{'concurrency':>11} {'graphs tok/s':>13} {'eager tok/s':>12} {'hf tok/s':>9} "
        f"{'vs eager':>9} {'vs hf':>6}"
    )
    rows = []
    for n in levels:
        prompts = make_prompts(n, args.input_len, VOCAB, seed=n)
        g = n * args.output_len / run_engine(graphs, prompts, args.output_len)
        e = n * args.output_len / run_engine(eager, prompts, args.output_len)
        h = run_hf(hf, prompts, args.output_len, pad_id=0)
        rows.append(
            {
                "concurrency": n,
                "graphs_tok_s": round(g, 1),
                "eager_tok_s": round(e, 1),
                "hf_tok_s": round(h, 1),
                "vs_eager": round(g / e, 2),
                "vs_hf": round(g / h, 2),
            }
        )
        print(f"{n:>11} {g:>13.1f} {e:>12.1f} {h:>9.1f} {g / e:>8.2f}x {g / h:>5.2f}x", flush=True)
    meta = {
        "device": torch.cuda.get_device_name(),
        "capture_s": round(compiled.startup_s, 2),
        "sizes": list(compiled.sizes),
        "input_len": args.input_len,
        "output_len": args.output_len,
    }
    write(Path(args.out), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
