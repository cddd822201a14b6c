"""A step's GEMMs alone, by kernel: every layer's weights of the default model (bfloat16,
out of cache as in a step) on our bf16 panels with the next panel prefetched by hand, on
them with the hardware's prefetchers alone, and on oneDNN's packed weights; interleaved,
the best of `--reps` rounds. What the engine's start-up probe decides (engine/model/
choose.py), laid out whole for the machine at hand.

    python -m bench.panel_gemm [--rows 1,8,16,32,256,1024] [--reps 7]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F

from engine.config import CacheConfig, EngineConfig
from engine.engine import Engine
from engine.kernels import cpu
from engine.model import onednn, panels
from engine.model.llama import DecoderLayer
from engine.model.probe import fastest
from engine.runner import ModelRunner


def step_weights(threads: int) -> list[torch.Tensor]:
    """Every layer's dense weights of the default model, in bfloat16."""
    from engine.env import default_model_path

    engine = Engine(
        EngineConfig(model=str(default_model_path()), dtype="bfloat16", num_threads=threads,
                     cache=CacheConfig(num_blocks=64)),
        load_tokenizer_files=False,
    )  # fmt: skip
    layers = cast(ModelRunner, engine.runner).model.layers
    return [w for layer in layers for w in cast(DecoderLayer, layer).dense_weights()]


Inputs = dict[int, torch.Tensor]  # a GEMM's input, by its row length


def kernels(weights: list[torch.Tensor]) -> dict[str, Callable[[Inputs], object]]:
    """Each kernel as one pass over `weights`."""
    ours = [(w, panels.pack(w)) for w in weights]
    dnn = onednn.PackedLinear({id(w): onednn.pack(w) for w in weights}, F.linear)

    def on_panels(prefetch: bool) -> Callable[[Inputs], object]:
        return lambda xs: [panels.linear(xs[w.shape[1]], p, prefetch) for w, p in ours]

    return {
        "panels, prefetch by hand": on_panels(True),
        "panels, hardware prefetch": on_panels(False),
        "oneDNN packed": lambda xs: [dnn(xs[w.shape[1]], w) for w in weights],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="1,8,16,32,256,1024")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not cpu.bf16_panels():
        raise SystemExit("the panel GEMM needs AVX-512 BF16, which this CPU lacks")
    torch.set_num_threads(args.threads)
    weights = step_weights(args.threads)
    fns = kernels(weights)
    params = sum(w.numel() for w in weights)
    print(f"{len(weights)} weights, {params / 1e6:.1f} M parameters, ms a pass (GFLOP/s)")
    print(f"{'rows':>5}  " + "  ".join(f"{name:>26}" for name in fns))
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            xs = {k: torch.randn(rows, k).to(torch.bfloat16) for k in {w.shape[1] for w in weights}}
            took = fastest([functools.partial(f, xs) for f in fns.values()], args.reps)
            cells = (f"{t * 1e3:8.2f} ({2 * rows * params / t / 1e9:5.0f})" for t in took)
            print(f"{rows:>5}  " + "  ".join(f"{c:>26}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
