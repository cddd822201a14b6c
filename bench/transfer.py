"""NIXL cross-process read bandwidth against an in-process memory copy of the same bytes.

    python -m bench.transfer [--sizes-mib 1,16,256] [--repeats 5]

A peer process registers a KV-shaped buffer; this process reads a KV handle of each size
(contiguous blocks: one descriptor) into its own registered buffer with a one-sided NIXL
READ over UCX. The baseline is `torch.Tensor.copy_` of the same number of bytes in this
process, with the benchmark's threads (2) and with one thread (UCX reads on one). Each
figure is the median of --repeats runs. Writes bench-results/transfer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from engine.transfer.nixl_transfer import NixlKVTransfer
from engine.transfer.peer_process import KVPeerProcess

BLOCK_FLOATS = 16 * 1024  # 64 KiB blocks


def _median_gb_s(nbytes: int, seconds: list[float]) -> float:
    return nbytes / statistics.median(seconds) / 1e9


def measure(mib: int, repeats: int) -> dict[str, float]:
    blocks = mib * (1 << 20) // (BLOCK_FLOATS * 4)
    shape = (blocks, BLOCK_FLOATS)
    peer = KVPeerProcess(f"bench-peer-{mib}", shape)
    reader = NixlKVTransfer(f"bench-reader-{mib}", torch.zeros(shape), progress_thread=False)
    try:
        reader.add_peer(peer.kv)
        ids = list(range(blocks))
        reader.read(peer.kv.agent_name, ids, ids)  # warm-up: connection set-up
        nixl = [reader.read(peer.kv.agent_name, ids, ids).seconds for _ in range(repeats)]
        if not torch.all(reader.kv_cache[:, 0] == 1000 + torch.arange(blocks)):
            raise RuntimeError("NIXL read returned wrong data")
    finally:
        reader.close()
        peer.finish()
    nbytes = blocks * BLOCK_FLOATS * 4
    return {
        "nixl_gb_s": _median_gb_s(nbytes, nixl),
        "copy_gb_s": _median_gb_s(nbytes, _copies(shape, repeats, torch.get_num_threads())),
        # One stream, as UCX reads: the single-thread copy is its fair ceiling.
        "copy_1t_gb_s": _median_gb_s(nbytes, _copies(shape, repeats, 1)),
    }


def _copies(shape: tuple[int, int], repeats: int, threads: int) -> list[float]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    src, dst = torch.randn(shape), torch.empty(shape)
    dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        seconds.append(time.perf_counter() - start)
    torch.set_num_threads(before)
    return seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes-mib", default="1,16,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench-results/transfer.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    print(
        f"{'MiB':>5} {'NIXL GB/s':>10} {'copy GB/s':>10} {'ratio':>6} "
        f"{'1-thread copy':>14} {'ratio':>6}"
    )
    for mib in (int(x) for x in args.sizes_mib.split(",")):
        r = measure(mib, args.repeats)
        rows.append({"mib": mib, **{k: round(v, 3) for k, v in r.items()}})
        print(
            f"{mib:>5} {r['nixl_gb_s']:>10.2f} {r['copy_gb_s']:>10.2f} "
            f"{r['nixl_gb_s'] / r['copy_gb_s']:>5.2f}x {r['copy_1t_gb_s']:>14.2f} "
            f"{r['nixl_gb_s'] / r['copy_1t_gb_s']:>5.2f}x",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
