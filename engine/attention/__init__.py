"""Attention backends behind one small interface, chosen by name."""

from __future__ import annotations

import torch

from engine.attention.base import AttentionBackend, BatchLayout, SeqSlice
from engine.attention.grouped import GroupedAttention
from engine.attention.torch_backend import TorchAttention

__all__ = ["AttentionBackend", "BatchLayout", "SeqSlice", "create_backend", "resolve_backend"]


# flashinfer's kernels read and write 16-bit caches (and FP8, which we do not keep), of
# the head sizes it builds kernels for
FLASHINFER_DTYPES = (torch.float16, torch.bfloat16)
FLASHINFER_HEAD_DIMS = (64, 128, 256)


def resolve_backend(name: str, kv_cache: torch.Tensor) -> str:
    """`auto` picks flashinfer for a cache it has kernels for on CUDA, when it is
    installed, else the torch reference."""
    if name != "auto":
        return name
    fits = kv_cache.dtype in FLASHINFER_DTYPES and kv_cache.shape[-1] in FLASHINFER_HEAD_DIMS
    if kv_cache.device.type == "cuda" and fits:
        try:
            import flashinfer  # noqa: F401
        except ImportError:
            return "torch"
        return "flashinfer"
    return "torch"


def create_backend(
    name: str,
    kv_cache: torch.Tensor,
    block_size: int,
    num_heads: int,
    scale: float,
    head_groups: int = 1,
) -> AttentionBackend:
    """`head_groups` > 1: kv_cache is [groups, num_blocks, ...], a backend a group
    (engine/attention/grouped.py)."""
    if head_groups > 1:
        parts = [
            create_backend(name, group, block_size, num_heads // head_groups, scale)
            for group in kv_cache.unbind(0)
        ]
        return GroupedAttention(kv_cache, parts)
    resolved = resolve_backend(name, kv_cache)
    if resolved == "torch":
        return TorchAttention(kv_cache, block_size, num_heads, scale)
    if resolved == "flashinfer":
        from engine.attention.flashinfer_backend import FlashInferAttention

        return FlashInferAttention(kv_cache, block_size, num_heads, scale)
    raise ValueError(f"unknown attention backend {name!r}; choose auto, torch or flashinfer")
