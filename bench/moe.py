"""Mixture-of-experts throughput: the engine's grouped experts (engine/model/moe.py: each
expert's tokens one GEMM) against the same engine with a per-token loop over each token's
experts, and against transformers `generate()`, on one small random MoE model.

    python -m bench.moe [--arch minimax_m2|qwen3_moe] [--concurrency 1,16] [--output-len 32]

The model is built here with transformers and random weights (nothing to download): 4
layers, hidden 512, 32 experts of 512 of which 4 a token, vocabulary 8,192, float32. All
three run in this process one after another, on the same random prompts of --input-len
tokens, generating exactly --output-len tokens each (EOS ignored); output tokens over wall
time, prefill included. transformers runs with the faster of its experts implementations
`eager` and `grouped_mm` (measured first, named in the result; `batched_mm` copies each
token's expert weights, 26 GB for 16 prompts of 128 tokens), on prompts of one length so
that it needs no attention mask: with one, its MoE generate() ran ~35x slower here.
The three must agree on every greedy token (printed).
Writes bench-results/moe.json.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.engine import run_engine
from bench.results import write
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.model import moe
from engine.model.ops import TorchOps
from engine.sampling_params import SamplingParams

SIZES: dict[str, Any] = dict(
    vocab_size=8192,
    hidden_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    num_experts_per_tok=4,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def build(arch: str, path: Path) -> Path:
    """A random-weight MoE checkpoint of `arch`, saved the way the Hub ships it."""
    import transformers as tf

    model: Any
    if arch == "minimax_m2":
        rope = {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5}
        config = tf.MiniMaxM2Config(
            **SIZES, num_local_experts=32, intermediate_size=512, rope_parameters=rope
        )
        model = tf.MiniMaxM2ForCausalLM(config)
    else:
        qwen = tf.Qwen3MoeConfig(
            **SIZES, num_experts=32, moe_intermediate_size=512, norm_topk_prob=True
        )
        model = tf.Qwen3MoeForCausalLM(qwen)
    torch.manual_seed(0)
    for layer in model.model.layers:  # a router at zero would tie every expert
        for p in layer.mlp.parameters():
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(path, safe_serialization=True)
    return path


def per_token_experts(
    h: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    ops: TorchOps,
) -> torch.Tensor:
    """The plain reading of a MoE layer: each token, each of its experts, one GEMV pair."""
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for w, e in zip(weights[t].tolist(), experts[t].tolist(), strict=True):
            y = ops.linear(ops.silu_and_mul(ops.linear(h[t : t + 1], gate_up[e])), down[e])
            out[t] += w * y[0]
    return out


def _engine(path: Path, max_seqs: int) -> Engine:
    cfg = EngineConfig(
        model=str(path),
        dtype="float32",
        cache=CacheConfig(num_blocks=2048),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs),
    )
    return Engine(cfg, load_tokenizer_files=False)


def _tokens(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    engine.pool.reset_cache()
    done = engine.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True))
    return [list(r.token_ids) for r in done]


@torch.inference_mode()
def _hf_generate(model: Any, prompts: list[list[int]], n: int) -> tuple[list[list[int]], float]:
    """transformers' greedy tokens for prompts of one length, and the seconds it took."""
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1] :].tolist(), time.perf_counter() - start


def fastest_hf(path: Path, prompts: list[list[int]]) -> tuple[str, Any]:
    """transformers' experts implementation that runs `prompts` fastest here, and its model."""
    from transformers import AutoModelForCausalLM

    best: tuple[float, str, Any] | None = None
    for impl in ("eager", "grouped_mm"):
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, experts_implementation=impl
        ).eval()
        _hf_generate(model, prompts, 2)  # warm
        took = _hf_generate(model, prompts, 4)[1]
        if best is None or took < best[0]:
            best = (took, impl, model)
    assert best is not None
    return best[1], best[2]


def measure(path: Path, concurrency: int, input_len: int, output_len: int) -> dict[str, Any]:
    rng = random.Random(concurrency)
    vocab = int(SIZES["vocab_size"])
    prompts = [[rng.randrange(100, vocab) for _ in range(input_len)] for _ in range(concurrency)]
    tokens = concurrency * output_len
    engine = _engine(path, concurrency)
    grouped_tokens = _tokens(engine, prompts[:2], 8)
    run_engine(engine, prompts, 4)  # warm: first-call costs out of the timing
    grouped = tokens / run_engine(engine, prompts, output_len)
    grouped_fn, moe.grouped_experts = moe.grouped_experts, per_token_experts
    try:
        loop_tokens = _tokens(engine, prompts[:2], 8)
        loop = tokens / run_engine(engine, prompts, output_len)
    finally:
        moe.grouped_experts = grouped_fn
    impl, hf = fastest_hf(path, prompts)
    hf_tokens = _hf_generate(hf, prompts[:2], 8)[0]
    transformers = tokens / _hf_generate(hf, prompts, output_len)[1]
    row = {
        "concurrency": concurrency,
        "transformers_experts_implementation": impl,
        "grouped_tok_s": grouped,
        "per_token_loop_tok_s": loop,
        "transformers_tok_s": transformers,
        "grouped_vs_loop": grouped / loop,
        "grouped_vs_transformers": grouped / transformers,
        "greedy_equal": grouped_tokens == loop_tokens == hf_tokens,
    }
    print(
        f"concurrency {concurrency}: grouped {grouped:.1f} tok/s, per-token loop {loop:.1f} "
        f"({grouped / loop:.2f}x), transformers ({impl}) {transformers:.1f} "
        f"({grouped / transformers:.2f}x);"
        f" greedy tokens equal: {row['greedy_equal']}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("minimax_m2", "qwen3_moe"), default="minimax_m2")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("bench-results/moe.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build(args.arch, Path(tmp) / args.arch)
        rows = [
            measure(path, int(c), args.input_len, args.output_len)
            for c in args.concurrency.split(",")
        ]
    result = {
        "arch": args.arch,
        "model": {**SIZES, "experts": 32, "expert_intermediate_size": 512},
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rows": rows,
    }
    write(args.out, result)


if __name__ == "__main__":
    main()
