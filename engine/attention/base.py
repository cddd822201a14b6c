"""The attention interface and the batch layout every backend receives.

A step's tokens are flattened: sequence i owns rows [query_start, query_start+query_len)
of q/k/v. Its context after this step is `context_len` tokens, of which the last
`query_len` are new:

    context:  [ cached / computed earlier ............ | new this step ]
              0                           context_len - query_len      context_len
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SeqSlice:
    query_start: int
    query_len: int
    context_len: int
    block_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BatchLayout:
    seqs: tuple[SeqSlice, ...]
    num_tokens: int


class AttentionBackend(ABC):
    """Owns reads and writes of the paged KV cache for one model.

    kv_cache: [num_blocks, num_layers, 2, block_size, kv_heads, head_dim]. Block-major, so a
    run of adjacent blocks is one contiguous region for every layer at once (one transfer
    descriptor per run).
    """

    name: str

    def __init__(
        self, kv_cache: torch.Tensor, block_size: int, num_heads: int, scale: float
    ) -> None:
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.num_heads = num_heads  # query heads
        self.scale = scale

    def write_kv(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        blocks: torch.Tensor,
        offsets: torch.Tensor,
    ) -> None:
        """Store this step's k/v ([N, kv_heads, D]) at their slots (block id, offset)."""
        self.kv_cache[blocks, layer, 0, offsets] = k
        self.kv_cache[blocks, layer, 1, offsets] = v

    @staticmethod
    def slots(layout: BatchLayout, block_size: int) -> tuple[list[int], list[int]]:
        """Block id and in-block offset of every new token, in row order."""
        blocks: list[int] = []
        offsets: list[int] = []
        for s in layout.seqs:
            for pos in range(s.context_len - s.query_len, s.context_len):
                blocks.append(s.block_ids[pos // block_size])
                offsets.append(pos % block_size)
        return blocks, offsets

    @abstractmethod
    def prepare(self, layout: BatchLayout) -> None:
        """Build per-step metadata once; every layer's `forward` reuses it."""

    @abstractmethod
    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q: [N, H, D], k/v: [N, kv_heads, D] for this step's tokens. Writes k/v into the
        cache at their slots, attends each query to its context, returns [N, H, D]."""
