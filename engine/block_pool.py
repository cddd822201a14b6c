"""The paged KV cache's allocator: blocks are integers, and this file imports no torch.

Each block has a reference count. A block whose count drops to zero goes to the tail of the
free queue but keeps its hash, so a later request with the same prefix can take it back
(a prefix-cache hit). Allocation pops from the head, evicting the least recently freed
cached block first:

    free queue:  head -> [b7] [b2] [b9] ... [b4] <- tail
                 evicted first            freed last

A request frees its blocks in reverse order, so its last (least shareable) block is
evicted before its first. Every change to the set of cached hashes is reported as a
KV event with a sequence number that grows by exactly one per event.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent, KVEventSink


class NoFreeBlocks(RuntimeError):
    """Raised when an allocation asks for more blocks than are free."""


class BlockPool:
    def __init__(self, num_blocks: int, on_event: KVEventSink | None = None) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts: list[int] = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        # Blocks with ref count 0, in eviction order (head first). Values are unused.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._on_event = on_event
        self.event_seq = 0  # sequence number of the last event emitted

    # ---- queries -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (free, cached or not)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def lookup_prefix(self, hashes: Sequence[int]) -> list[int]:
        """Block ids holding the longest leading run of `hashes`. Changes nothing."""
        hits: list[int] = []
        for h in hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def cached_hashes(self) -> list[int]:
        """Every hash this pool can serve, for a consumer that must resync."""
        return list(self._cached)

    def free_after_acquire(self, block_ids: Iterable[int]) -> int:
        """How many blocks would be free after acquiring `block_ids` (some may be free now)."""
        return len(self._free) - sum(1 for b in block_ids if self.ref_counts[b] == 0)

    # ---- changes -------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """Take `n` blocks from the head of the free queue, evicting their cached hashes."""
        if n > len(self._free):
            raise NoFreeBlocks(f"asked for {n} blocks, {len(self._free)} free")
        out: list[int] = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            self._evict(block)
            self.ref_counts[block] = 1
            out.append(block)
        return out

    def acquire(self, block_ids: Iterable[int]) -> None:
        """Take another reference to blocks that are in use or cached."""
        for b in block_ids:
            if self.ref_counts[b] == 0:
                if self.block_hashes[b] is None:
                    raise ValueError(f"block {b} is neither in use nor cached")
                del self._free[b]
            self.ref_counts[b] += 1

    def release(self, block_ids: Sequence[int]) -> None:
        """Drop one reference to each block; tail blocks go to the free queue first."""
        for b in reversed(block_ids):
            if self.ref_counts[b] <= 0:
                raise ValueError(f"block {b} released more often than acquired")
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self._free[b] = None

    def commit(
        self, block_id: int, block_hash: int, parent_hash: int | None, token_ids: Sequence[int]
    ) -> bool:
        """Record that a full, computed block holds `block_hash`. Returns False when another
        block already serves that hash (then this block stays private and uncached)."""
        if self.ref_counts[block_id] <= 0:
            raise ValueError(f"block {block_id} is not in use")
        if self.block_hashes[block_id] is not None or block_hash in self._cached:
            return False
        self.block_hashes[block_id] = block_hash
        self._cached[block_hash] = block_id
        self._emit(
            BlockStored(
                seq=self.event_seq + 1,
                block_hash=block_hash,
                parent_hash=parent_hash,
                token_ids=tuple(token_ids),
                block_id=block_id,
            )
        )
        return True

    def reset_cache(self) -> None:
        """Forget every cached hash (blocks in use stay allocated, now uncached)."""
        for b in self._cached.values():
            self.block_hashes[b] = None
        self._cached.clear()
        self._emit(AllBlocksCleared(seq=self.event_seq + 1))

    def _evict(self, block: int) -> None:
        h = self.block_hashes[block]
        if h is None:
            return
        self.block_hashes[block] = None
        del self._cached[h]
        self._emit(BlockRemoved(seq=self.event_seq + 1, block_hash=h, block_id=block))

    def _emit(self, event: KVEvent) -> None:
        self.event_seq = event.seq
        if self._on_event is not None:
            self._on_event(event)

    # ---- invariants ----------------------------------------------------------------
    def check_integrity(self) -> None:
        """Raise AssertionError if any invariant is broken. Tests call this after every path."""
        for b, rc in enumerate(self.ref_counts):
            if rc < 0:
                raise AssertionError(f"block {b} has negative ref count {rc}")
            if (rc == 0) != (b in self._free):
                raise AssertionError(
                    f"block {b}: ref count {rc} but in free queue={b in self._free}"
                )
        for h, b in self._cached.items():
            if self.block_hashes[b] != h:
                raise AssertionError(
                    f"cache maps hash {h:#x} to block {b} holding {self.block_hashes[b]}"
                )
        n_hashed = sum(1 for h in self.block_hashes if h is not None)
        if n_hashed != len(self._cached):
            raise AssertionError(
                f"{n_hashed} blocks carry hashes but {len(self._cached)} are cached"
            )

    def is_idle(self) -> bool:
        """True when no block is referenced: every block is free (cached or not)."""
        return len(self._free) == self.num_blocks
