"""KV events: what a worker's block pool tells the world about its prefix cache.

Every event carries a per-pool sequence number that increases by exactly one per event,
so a consumer that sees a gap knows it missed something and must resync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    seq: int
    block_hash: int
    parent_hash: int | None  # None for the first block of a sequence
    token_ids: tuple[int, ...]
    block_id: int


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    seq: int
    block_hash: int
    block_id: int


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    seq: int


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
KVEventSink = Callable[[KVEvent], None]
