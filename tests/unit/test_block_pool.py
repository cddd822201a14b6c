"""BlockPool: exact ids, reference counts, LRU eviction order and KV events."""

from __future__ import annotations

import pytest

from engine.block_pool import BlockPool, NoFreeBlocks
from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[KVEvent] = []

    def __call__(self, event: KVEvent) -> None:
        self.events.append(event)


def make_pool(n: int) -> tuple[BlockPool, Recorder]:
    rec = Recorder()
    return BlockPool(n, on_event=rec), rec


def assert_seq_contiguous(events: list[KVEvent], start: int = 1) -> None:
    assert [e.seq for e in events] == list(range(start, start + len(events)))


def commit_all(pool: BlockPool, blocks: list[int], hashes: list[int]) -> None:
    parent: int | None = None
    for i, (b, h) in enumerate(zip(blocks, hashes, strict=True)):
        assert pool.commit(b, h, parent, [10 * i, 10 * i + 1])
        parent = h


# ---- construction and allocation ---------------------------------------------------


@pytest.mark.parametrize("n", [0, -3])
def test_non_positive_size_rejected(n: int) -> None:
    with pytest.raises(ValueError):
        BlockPool(n)


def test_fresh_pool_state() -> None:
    pool, rec = make_pool(5)
    assert pool.num_free_blocks == 5
    assert pool.num_cached_blocks == 0
    assert pool.usage() == 0.0
    assert pool.event_seq == 0
    assert pool.is_idle()
    assert rec.events == []
    pool.check_integrity()


def test_allocate_hands_out_ids_in_order() -> None:
    pool, rec = make_pool(6)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(1) == [2]
    assert pool.allocate(3) == [3, 4, 5]
    assert pool.ref_counts == [1] * 6
    assert pool.num_free_blocks == 0
    assert pool.usage() == 1.0
    assert not pool.is_idle()
    assert rec.events == []  # nothing cached, so nothing evicted
    pool.check_integrity()
    pool.release(list(range(6)))
    pool.check_integrity()
    assert pool.is_idle()


def test_allocate_zero_is_a_no_op() -> None:
    pool, _ = make_pool(2)
    assert pool.allocate(0) == []
    assert pool.num_free_blocks == 2
    pool.check_integrity()
    assert pool.is_idle()


def test_over_allocation_raises_and_changes_nothing() -> None:
    pool, rec = make_pool(4)
    held = pool.allocate(3)
    with pytest.raises(NoFreeBlocks):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    assert pool.ref_counts == [1, 1, 1, 0]
    assert pool.allocate(1) == [3]
    with pytest.raises(NoFreeBlocks):
        pool.allocate(1)
    assert rec.events == []
    pool.check_integrity()
    pool.release(held + [3])
    pool.check_integrity()
    assert pool.is_idle()


def test_over_allocation_evicts_no_cached_block() -> None:
    """A request that cannot fit must not cost the prefix cache its blocks."""
    pool, rec = make_pool(3)
    blocks = pool.allocate(2)
    commit_all(pool, blocks, [11, 12])
    pool.release(blocks)  # free, still cached
    seen = len(rec.events)
    with pytest.raises(NoFreeBlocks):
        pool.allocate(4)
    assert rec.events[seen:] == []  # no BlockRemoved
    assert pool.lookup_prefix([11, 12]) == blocks
    assert pool.num_cached_blocks == 2 and pool.num_free_blocks == 3
    pool.check_integrity()


def test_usage_fraction() -> None:
    pool, _ = make_pool(4)
    blocks = pool.allocate(1)
    assert pool.usage() == 0.25
    blocks += pool.allocate(2)
    assert pool.usage() == 0.75
    pool.release(blocks)
    assert pool.usage() == 0.0
    pool.check_integrity()
    assert pool.is_idle()


# ---- reference counts ------------------------------------------------------------


def test_acquire_and_release_ref_counts() -> None:
    pool, _ = make_pool(4)
    a = pool.allocate(2)
    assert a == [0, 1]
    pool.acquire(a)
    assert pool.ref_counts[:2] == [2, 2]
    pool.acquire([0])
    assert pool.ref_counts[:2] == [3, 2]
    pool.release(a)
    assert pool.ref_counts[:2] == [2, 1]
    assert pool.num_free_blocks == 2
    pool.release(a)
    assert pool.ref_counts[:2] == [1, 0]
    assert pool.num_free_blocks == 3
    pool.check_integrity()
    pool.release([0])
    assert pool.ref_counts == [0, 0, 0, 0]
    pool.check_integrity()
    assert pool.is_idle()


def test_release_same_block_twice_raises() -> None:
    pool, _ = make_pool(3)
    [b] = pool.allocate(1)
    pool.release([b])
    with pytest.raises(ValueError, match="released more often"):
        pool.release([b])
    assert pool.ref_counts[b] == 0
    pool.check_integrity()
    assert pool.is_idle()


def test_release_never_allocated_block_raises() -> None:
    pool, _ = make_pool(3)
    with pytest.raises(ValueError):
        pool.release([2])
    pool.check_integrity()
    assert pool.is_idle()


def test_acquire_free_uncached_block_raises() -> None:
    pool, _ = make_pool(3)
    with pytest.raises(ValueError, match="neither in use nor cached"):
        pool.acquire([1])
    assert pool.ref_counts == [0, 0, 0]
    pool.check_integrity()
    assert pool.is_idle()


def test_acquire_freed_uncached_block_raises() -> None:
    pool, _ = make_pool(3)
    [b] = pool.allocate(1)
    pool.release([b])  # never committed: free and uncached
    with pytest.raises(ValueError):
        pool.acquire([b])
    pool.check_integrity()
    assert pool.is_idle()


def test_acquire_free_cached_block_takes_it_out_of_free_queue() -> None:
    pool, rec = make_pool(3)
    [b] = pool.allocate(1)
    assert pool.commit(b, 0xAAA, None, [1, 2])
    pool.release([b])
    assert pool.num_free_blocks == 3
    assert pool.free_after_acquire([b]) == 2
    pool.acquire([b])
    assert pool.ref_counts[b] == 1
    assert pool.num_free_blocks == 2
    assert pool.block_hashes[b] == 0xAAA
    # Allocation can no longer take (and evict) it.
    assert pool.allocate(2) == [1, 2]
    assert [type(e) for e in rec.events] == [BlockStored]
    pool.check_integrity()
    pool.release([b, 1, 2])
    pool.check_integrity()
    assert pool.is_idle()


def test_free_after_acquire_counts_only_free_blocks() -> None:
    pool, _ = make_pool(5)
    a = pool.allocate(2)  # [0, 1] in use
    commit_all(pool, a, [11, 12])
    pool.release([a[1]])  # block 1 free but cached
    assert pool.num_free_blocks == 4
    assert pool.free_after_acquire([]) == 4
    assert pool.free_after_acquire([0]) == 4  # in use already: costs nothing
    assert pool.free_after_acquire([1]) == 3
    assert pool.free_after_acquire([0, 1]) == 3
    pool.check_integrity()
    pool.release([a[0]])
    pool.check_integrity()
    assert pool.is_idle()


# ---- free queue order and eviction -----------------------------------------------


def test_release_in_reverse_puts_tail_block_first_in_line() -> None:
    pool, rec = make_pool(3)
    blocks = pool.allocate(3)
    hashes = [101, 102, 103]
    commit_all(pool, blocks, hashes)
    pool.release(blocks)  # free queue: [2, 1, 0]
    assert pool.is_idle()
    assert pool.num_cached_blocks == 3
    rec.events.clear()
    # The tail block (2) is evicted first, then 1, then 0.
    assert pool.allocate(1) == [2]
    assert rec.events == [BlockRemoved(seq=4, block_hash=103, block_id=2)]
    assert pool.lookup_prefix(hashes) == [0, 1]
    assert pool.allocate(1) == [1]
    assert pool.allocate(1) == [0]
    assert rec.events == [
        BlockRemoved(seq=4, block_hash=103, block_id=2),
        BlockRemoved(seq=5, block_hash=102, block_id=1),
        BlockRemoved(seq=6, block_hash=101, block_id=0),
    ]
    assert pool.num_cached_blocks == 0
    assert pool.block_hashes == [None, None, None]
    pool.check_integrity()
    pool.release([0, 1, 2])
    pool.check_integrity()
    assert pool.is_idle()


def test_lru_eviction_order() -> None:
    pool, rec = make_pool(4)
    a = pool.allocate(2)  # [0, 1]
    b = pool.allocate(1)  # [2]
    assert (a, b) == ([0, 1], [2])
    commit_all(pool, a, [0xA0, 0xA1])
    assert pool.commit(2, 0xB0, None, [7, 7])
    pool.release(b)  # free queue: [3, 2]
    pool.release(a)  # free queue: [3, 2, 1, 0]
    assert pool.num_cached_blocks == 3
    rec.events.clear()

    # Block 3 was never cached: taking it evicts nothing.
    assert pool.allocate(1) == [3]
    assert rec.events == []
    # Next the least recently freed cached block: 2 (freed before a's blocks).
    assert pool.allocate(1) == [2]
    assert rec.events == [BlockRemoved(seq=4, block_hash=0xB0, block_id=2)]
    # Then a's tail block before a's head block.
    assert pool.allocate(1) == [1]
    assert rec.events[-1] == BlockRemoved(seq=5, block_hash=0xA1, block_id=1)
    assert pool.lookup_prefix([0xA0, 0xA1]) == [0]
    assert pool.allocate(1) == [0]
    assert rec.events[-1] == BlockRemoved(seq=6, block_hash=0xA0, block_id=0)
    assert pool.event_seq == 6
    pool.check_integrity()
    pool.release([0, 1, 2, 3])
    pool.check_integrity()
    assert pool.is_idle()


def test_reacquired_block_goes_to_back_of_queue_when_freed_again() -> None:
    pool, rec = make_pool(3)
    blocks = pool.allocate(3)
    commit_all(pool, blocks, [1, 2, 3])
    pool.release([0])  # queue: [0]
    pool.release([1])  # queue: [0, 1]
    pool.release([2])  # queue: [0, 1, 2]
    pool.acquire([0])  # queue: [1, 2]
    pool.release([0])  # queue: [1, 2, 0] -- recently used again, so last to go
    rec.events.clear()
    assert pool.allocate(3) == [1, 2, 0]
    assert [(e.block_id, e.block_hash) for e in rec.events] == [(1, 2), (2, 3), (0, 1)]
    assert all(isinstance(e, BlockRemoved) for e in rec.events)
    pool.check_integrity()
    pool.release([1, 2, 0])
    pool.check_integrity()
    assert pool.is_idle()


# ---- prefix lookup and commit ----------------------------------------------------


def test_lookup_prefix_stops_at_first_miss() -> None:
    pool, _ = make_pool(6)
    blocks = pool.allocate(3)
    commit_all(pool, blocks, [50, 51, 52])
    assert pool.lookup_prefix([50, 51, 52]) == [0, 1, 2]
    assert pool.lookup_prefix([50, 51]) == [0, 1]
    assert pool.lookup_prefix([50, 99, 52]) == [0]  # 52 is cached but after a miss
    assert pool.lookup_prefix([99, 50]) == []
    assert pool.lookup_prefix([]) == []
    # lookup changes nothing
    assert pool.ref_counts == [1, 1, 1, 0, 0, 0]
    assert sorted(pool.cached_hashes()) == [50, 51, 52]
    pool.check_integrity()
    pool.release(blocks)
    # Cached but free blocks are still found.
    assert pool.lookup_prefix([50, 51, 52, 53]) == [0, 1, 2]
    pool.check_integrity()
    assert pool.is_idle()


def test_commit_duplicate_hash_returns_false_and_emits_nothing() -> None:
    pool, rec = make_pool(4)
    a, b = pool.allocate(2)
    assert pool.commit(a, 777, None, [1, 2])
    assert not pool.commit(b, 777, None, [1, 2])
    assert pool.block_hashes[b] is None  # stays private
    assert pool.lookup_prefix([777]) == [a]
    assert len(rec.events) == 1
    assert pool.event_seq == 1
    # Recommitting an already-hashed block (even with a new hash) is refused too.
    assert not pool.commit(a, 888, None, [1, 2])
    assert pool.block_hashes[a] == 777
    assert pool.event_seq == 1
    pool.check_integrity()
    pool.release([a, b])
    pool.check_integrity()
    assert pool.is_idle()


def test_commit_on_free_block_raises() -> None:
    pool, rec = make_pool(2)
    with pytest.raises(ValueError, match="not in use"):
        pool.commit(0, 5, None, [1])
    assert rec.events == []
    pool.check_integrity()
    assert pool.is_idle()


def test_block_stored_events_carry_parent_and_tokens() -> None:
    pool, rec = make_pool(4)
    blocks = pool.allocate(3)
    assert pool.commit(blocks[0], 0x100, None, [1, 2, 3, 4])
    assert pool.commit(blocks[1], 0x200, 0x100, [5, 6, 7, 8])
    assert pool.commit(blocks[2], 0x300, 0x200, (9, 10, 11, 12))
    assert rec.events == [
        BlockStored(seq=1, block_hash=0x100, parent_hash=None, token_ids=(1, 2, 3, 4), block_id=0),
        BlockStored(seq=2, block_hash=0x200, parent_hash=0x100, token_ids=(5, 6, 7, 8), block_id=1),
        BlockStored(
            seq=3, block_hash=0x300, parent_hash=0x200, token_ids=(9, 10, 11, 12), block_id=2
        ),
    ]
    assert all(isinstance(e.token_ids, tuple) for e in rec.events)
    assert pool.num_cached_blocks == 3
    pool.check_integrity()
    pool.release(blocks)
    pool.check_integrity()
    assert pool.is_idle()


def test_event_sequence_numbers_increase_by_one_across_kinds() -> None:
    pool, rec = make_pool(2)
    a = pool.allocate(2)
    commit_all(pool, a, [1, 2])  # seq 1, 2
    pool.release(a)  # queue: [1, 0]
    b = pool.allocate(1)  # evicts hash 2: seq 3
    assert b == [1]
    assert pool.commit(1, 3, None, [0])  # seq 4
    pool.reset_cache()  # seq 5
    pool.release(b)
    [c] = pool.allocate(1)  # block 0: hash cleared by reset, no event
    assert c == 0
    assert pool.commit(c, 4, None, [0])  # seq 6
    assert [type(e) for e in rec.events] == [
        BlockStored,
        BlockStored,
        BlockRemoved,
        BlockStored,
        AllBlocksCleared,
        BlockStored,
    ]
    assert_seq_contiguous(rec.events)
    assert pool.event_seq == 6
    pool.check_integrity()
    pool.release([c])
    pool.check_integrity()
    assert pool.is_idle()


def test_event_seq_advances_without_a_sink() -> None:
    pool = BlockPool(2)
    [b] = pool.allocate(1)
    assert pool.commit(b, 9, None, [1])
    pool.reset_cache()
    assert pool.event_seq == 2
    pool.release([b])
    pool.check_integrity()
    assert pool.is_idle()


# ---- reset_cache ---------------------------------------------------------------


def test_reset_cache_forgets_hashes_but_keeps_blocks_in_use() -> None:
    pool, rec = make_pool(4)
    blocks = pool.allocate(3)
    commit_all(pool, blocks, [21, 22, 23])
    pool.release([blocks[2]])  # block 2 free but cached
    rec.events.clear()
    pool.reset_cache()
    assert rec.events == [AllBlocksCleared(seq=4)]
    assert pool.num_cached_blocks == 0
    assert pool.cached_hashes() == []
    assert pool.block_hashes == [None, None, None, None]
    assert pool.lookup_prefix([21, 22, 23]) == []
    assert pool.ref_counts == [1, 1, 0, 0]
    assert pool.num_free_blocks == 2
    pool.check_integrity()
    # The freed, now uncached block cannot be acquired any more ...
    with pytest.raises(ValueError):
        pool.acquire([2])
    # ... and allocating it evicts nothing.
    rec.events.clear()
    assert pool.allocate(2) == [3, 2]
    assert rec.events == []
    # Blocks in use may be committed again after a reset.
    assert pool.commit(0, 21, None, [0, 1])
    assert rec.events == [
        BlockStored(seq=5, block_hash=21, parent_hash=None, token_ids=(0, 1), block_id=0)
    ]
    pool.check_integrity()
    pool.release([0, 1, 3, 2])
    pool.check_integrity()
    assert pool.is_idle()


def test_reset_cache_on_empty_pool_still_emits() -> None:
    pool, rec = make_pool(1)
    pool.reset_cache()
    pool.reset_cache()
    assert rec.events == [AllBlocksCleared(seq=1), AllBlocksCleared(seq=2)]
    pool.check_integrity()
    assert pool.is_idle()


# ---- the integrity check itself -----------------------------------------------------


def test_check_integrity_detects_ref_count_corruption() -> None:
    pool, _ = make_pool(3)
    pool.allocate(1)
    pool.check_integrity()
    pool.ref_counts[0] = 0  # in use according to the free queue, free by ref count
    with pytest.raises(AssertionError, match="block 0"):
        pool.check_integrity()
    pool.ref_counts[0] = 1
    pool.check_integrity()
    pool.ref_counts[2] = 1  # free queue holds it, but it claims a reference
    with pytest.raises(AssertionError, match="block 2"):
        pool.check_integrity()
    pool.ref_counts[2] = 0
    pool.ref_counts[1] = -1
    with pytest.raises(AssertionError, match="negative"):
        pool.check_integrity()
    pool.ref_counts[1] = 0
    pool.release([0])
    pool.check_integrity()
    assert pool.is_idle()


def test_check_integrity_detects_hash_corruption() -> None:
    pool, _ = make_pool(3)
    [b] = pool.allocate(1)
    assert pool.commit(b, 42, None, [1])
    pool.check_integrity()
    pool.block_hashes[b] = 43  # cache says 42 -> b, block says 43
    with pytest.raises(AssertionError, match="cache maps"):
        pool.check_integrity()
    pool.block_hashes[b] = 42
    pool.block_hashes[1] = 99  # a hash the cache does not know about
    with pytest.raises(AssertionError, match="carry hashes"):
        pool.check_integrity()
    pool.block_hashes[1] = None
    pool.check_integrity()
    pool.release([b])
    pool.check_integrity()
    assert pool.is_idle()
