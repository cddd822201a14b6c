"""Decode attention alone against what this machine can read, in one run.

    python -m bench.decode_attention [--batch 32] [--context 257] [--rounds 7]

A decode step's attention over the paged cache (`torch.ops.tandem.paged_decode`, the
default model's geometry: 30 layers, 9 query heads on 3 kv heads of 64, blocks of 16, in
bfloat16) for one batch, five ways, best of `--rounds` interleaved rounds:

    scattered   the sequences' blocks at random places in a ~1.2 GiB cache (a worker's
                cache after much churn)
    in order    each sequence's blocks side by side, the sequences far apart (a prompt's
                blocks taken from the pool at once)
    in cache    every sequence on the same few blocks: the kernel's own arithmetic
    gather      the scattered blocks' bytes copied out with index_select (the rate of
                reads of that shape here; it writes as much again)
    sweep       the same number of bytes summed in one contiguous stretch

The kernel is memory-bound where "scattered" is near "gather", and compute-bound where it
is near "in cache".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from engine.kernels import cpu
from engine.model.probe import fastest

LAYERS, BLOCK, KV_HEADS, GROUP, DIM = 30, 16, 3, 3, 64
CACHE_BLOCKS = 40_000  # ~1.2 GiB in bfloat16, as a worker's cache


def cases(batch: int, context: int) -> tuple[dict[str, Callable[[], object]], int]:
    """The ways, and the bytes of K and V one step reads."""
    g = torch.Generator().manual_seed(0)
    per = -(-context // BLOCK)
    cache = torch.empty(CACHE_BLOCKS, LAYERS, 2, BLOCK, KV_HEADS, DIM, dtype=torch.bfloat16)
    cache.normal_(0.0, 0.5, generator=g)  # written pages, as a serving worker's cache
    scattered = torch.randperm(CACHE_BLOCKS, generator=g)[: batch * per].view(batch, per)
    in_order = torch.randperm(CACHE_BLOCKS // per, generator=g)[:batch, None] * per
    in_order = in_order + torch.arange(per)
    hot = torch.arange(per).repeat(batch, 1)
    lens = torch.full((batch,), context, dtype=torch.int64)
    q = torch.randn(batch, KV_HEADS * GROUP, DIM, generator=g).to(torch.bfloat16)
    nbytes = batch * per * LAYERS * cache[0, 0].numel() * cache.element_size()
    sweep = torch.empty(nbytes // cache.element_size(), dtype=torch.bfloat16).normal_()
    copied = torch.empty(batch * per, *cache.shape[2:], dtype=torch.bfloat16)

    def step(tables: torch.Tensor) -> Callable[[], object]:
        def run() -> None:
            for layer in range(LAYERS):
                torch.ops.tandem.paged_decode(q, cache, layer, tables, lens, DIM**-0.5)

        return run

    def gather() -> None:
        for layer in range(LAYERS):
            torch.index_select(cache[:, layer], 0, scattered.flatten(), out=copied)

    ways = {"scattered": step(scattered), "in order": step(in_order), "in cache": step(hot)}
    ways["gather"] = gather
    ways["sweep"] = sweep.sum
    return ways, nbytes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=257)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if not cpu.load():
        raise SystemExit("the C++ kernels did not build here: nothing to measure")
    torch.set_num_threads(args.threads)
    ways, nbytes = cases(args.batch, args.context)
    best = dict(zip(ways, fastest(list(ways.values()), args.rounds), strict=True))
    print(f"batch {args.batch}, context {args.context}, {nbytes / 1e6:.0f} MB of K/V a step")
    for name, s in best.items():
        print(f"{name:<10} {s * 1e3:7.2f} ms  {nbytes / s / 1e9:5.1f} GB/s")
    print(f"scattered / gather {best['scattered'] / best['gather']:.2f}x, "
          f"scattered / in cache {best['scattered'] / best['in cache']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
