"""Which KV heads a rank's registered memory holds, and which of a peer's ranks a reader's
rank reads them from, when the two workers shard the heads over different numbers of
ranks (vLLM's heterogeneous tensor parallelism over NIXL).

A rank holds the KV heads [first, first + count) of the model, laid out in `groups` head
groups: group g is its own block-major cache, [num_blocks, layers, 2, block, heads, dim],
so a run of adjacent blocks of one group is one contiguous region (one descriptor):

    prefill, 2 ranks (1 group each)       decode, 1 rank, 2 groups
    rank 0: heads 0-1  blocks 0..n  --->  group 0: heads 0-1  blocks 0..n
    rank 1: heads 2-3  blocks 0..n  --->  group 1: heads 2-3  blocks 0..n

A reader's group is read from the one peer group that holds exactly its heads, so the
bytes read are the head slices the reader needs, each once. The worker with fewer ranks
holds its heads in (larger size / its size) groups, the other in one; `tandem serve` sizes
them from the two pools (`--kv-head-groups` on a lone worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeadSlice:
    first: int  # the model's index of this rank's first KV head
    count: int  # KV heads this rank holds
    groups: int = 1  # head groups its cache is laid out in

    def __post_init__(self) -> None:
        if self.count < 1 or self.groups < 1 or self.count % self.groups:
            raise ValueError(
                f"{self.count} KV heads cannot be laid out in {self.groups} head groups"
            )

    @property
    def group_heads(self) -> int:
        return self.count // self.groups

    def group_first(self, group: int) -> int:
        return self.first + group * self.group_heads


@dataclass(frozen=True, slots=True)
class Source:
    """One of a reader rank's head groups, and the peer rank (by agent name) and group
    holding the same heads."""

    agent: str
    remote_group: int
    local_group: int


def plan_sources(own: HeadSlice, peer_ranks: Sequence[tuple[str, HeadSlice]]) -> list[Source]:
    """Where each of our head groups is read from: `peer_ranks` are the peer worker's ranks
    (agent name, heads). Raises ValueError, saying what to change, when a group of ours
    is not exactly one of the peer's."""
    sources = []
    for g in range(own.groups):
        first = own.group_first(g)
        holder = next(
            ((name, h) for name, h in peer_ranks if h.first <= first < h.first + h.count), None
        )
        if holder is None:
            raise ValueError(f"no rank of the peer holds KV head {first}")
        name, heads = holder
        offset = first - heads.first
        if heads.group_heads != own.group_heads or offset % heads.group_heads:
            raise ValueError(
                f"the peer holds its KV heads in groups of {heads.group_heads} a rank and "
                f"this worker in groups of {own.group_heads}: each must read whole groups "
                "(the worker with fewer tensor-parallel ranks needs --kv-head-groups equal "
                "to the ratio of the two sizes; tandem serve sets it)"
            )
        sources.append(Source(name, offset // heads.group_heads, g))
    return sources
