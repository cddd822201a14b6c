"""Zeroed CPU tensors on transparent huge pages, for the KV cache.

Why: decode attention reads every running sequence's blocks each step, scattered over a
cache of a gigabyte or more. With 4 KiB pages nearly every block is a TLB miss (a 1 GiB
cache is 262,144 pages; a Zen 4 core's TLBs hold ~3,000), and the kernel waits on page
walks as well as on memory. Backed by 2 MiB pages the same cache is 512 of them. Measured
alone (batch 32, context 290, 30 layers, bfloat16, blocks scattered over 1 GiB, 2 threads
on a Zen 4 EPYC; docs/benchmarks.md): 23-25 ms a step on 4 KiB pages, 18.5-20.5 ms on huge.

Only the cache asks for them. torch's `THP_MEM_ALLOC_ENABLE=1` puts every large allocation
on huge pages, and a prefill's activations, allocated and freed each step, then pay a
2 MiB zeroing fault apiece: the engine's prefill ran 7% slower with it.

Linux with THP in `madvise` or `always` mode: the memory is a private anonymous mapping
advised `MADV_HUGEPAGE` from its first 2 MiB boundary, then written once.
Elsewhere (THP off, another OS) the same call returns plain `torch.zeros`.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's THP mode (`always`, `madvise` or `never`); `never` where there is none."""
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return "never"
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else "never"


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous zeroed CPU tensor, on huge pages where the kernel grants them."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE") or thp_mode() == "never":
        return torch.zeros(shape, dtype=dtype)
    # private and anonymous: zero-filled, faulted on use (a shared mapping would be shmem,
    # which THP's `enabled` does not govern)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive
    start = -raw.data_ptr() % HUGE_PAGE  # the first 2 MiB boundary inside it
    region.madvise(mmap.MADV_HUGEPAGE, start, nbytes)
    out = raw[start : start + nbytes].view(dtype).view(shape)
    # Fault every page in now, as torch.zeros would: a huge page's first touch zeroes 2 MiB
    # (after compacting memory, where it must), which in a step cost more than the pages
    # save (a prefill 25% slower, measured).
    out.zero_()
    return out
