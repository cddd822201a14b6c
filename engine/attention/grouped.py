"""Attention over a cache laid out in head groups (engine/transfer/heads.py says why):
each group is a block-major cache of its own, [num_blocks, layers, 2, block, heads, dim],
attended by a backend of its own over the query heads that share its KV heads. So every
kernel still sees the cache it was written for; a step runs each kernel once a group."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.attention.base import AttentionBackend, BatchLayout


class GroupedAttention(AttentionBackend):
    def __init__(self, kv_cache: torch.Tensor, parts: Sequence[AttentionBackend]) -> None:
        """`kv_cache`: [groups, num_blocks, ...]; `parts[g]` attends over kv_cache[g]."""
        first = parts[0]
        super().__init__(kv_cache, first.block_size, first.num_heads * len(parts), first.scale)
        self.name = first.name
        self._parts = tuple(parts)

    def write_kv(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        blocks: torch.Tensor,
        offsets: torch.Tensor,
    ) -> None:
        n = len(self._parts)
        for part, kg, vg in zip(self._parts, k.chunk(n, 1), v.chunk(n, 1), strict=True):
            part.write_kv(layer, kg, vg, blocks, offsets)

    def prepare(self, layout: BatchLayout) -> None:
        # Each part builds the same metadata: a few tensors a step, per group.
        for part in self._parts:
            part.prepare(layout)

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q: [N, H, D], k/v: [N, kv_heads, D]; group g takes the g-th share of each (the
        query heads of its KV heads, as grouped-query attention pairs them)."""
        n = len(self._parts)
        shares = zip(self._parts, q.chunk(n, 1), k.chunk(n, 1), v.chunk(n, 1), strict=True)
        # the kernels read rows of their own heads: each share made contiguous
        outs = [
            part.forward(layer, qg.contiguous(), kg.contiguous(), vg.contiguous())
            for part, qg, kg, vg in shares
        ]
        return torch.cat(outs, dim=1)
