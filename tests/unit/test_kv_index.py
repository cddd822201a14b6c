"""KVIndex: exact leading-block counts, every update path, slot reuse and bounded churn."""

from __future__ import annotations

import random

import pytest

from services.kv.index import KVIndex
from services.pb.events_pb2 import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

A, B, C = "worker-a", "worker-b", "worker-c"
H = [1000 + i for i in range(10)]  # a prompt's chained hashes h_0..h_9


def stored(*hashes: int) -> list[KVEvent]:
    return [KVEvent(seq=i + 1, stored=BlockStored(block_hash=h)) for i, h in enumerate(hashes)]


def removed(*hashes: int) -> list[KVEvent]:
    return [KVEvent(seq=i + 1, removed=BlockRemoved(block_hash=h)) for i, h in enumerate(hashes)]


def cleared() -> list[KVEvent]:
    return [KVEvent(seq=1, cleared=AllBlocksCleared())]


@pytest.fixture
def index() -> KVIndex:
    ix = KVIndex()
    ix.apply(A, stored(*H[:6]))
    ix.apply(B, stored(*H[:3]))
    ix.apply(C, stored(*H[:10]))
    ix.check_integrity()
    return ix


# ---- lookup ---------------------------------------------------------------------------


def test_lookup_counts_leading_blocks(index: KVIndex) -> None:
    assert index.lookup(H) == {A: 6, B: 3, C: 10}
    assert index.lookup(H[:4]) == {A: 4, B: 3, C: 4}
    assert index.lookup(H[:1]) == {A: 1, B: 1, C: 1}
    assert index.num_hashes == 10
    assert index.num_entries == 19
    assert [index.blocks_of(w) for w in (A, B, C, "nobody")] == [6, 3, 10, 0]
    assert index.workers() == [A, B, C]


def test_lookup_misses(index: KVIndex) -> None:
    assert index.lookup([]) == {}
    assert index.lookup([1, 2, 3]) == {}
    assert index.lookup([9999, *H]) == {}  # a first block nobody holds: no prefix at all
    assert index.lookup([H[0], 9999, H[1]]) == {A: 1, B: 1, C: 1}  # stop at the first gap


def test_later_block_without_earlier_counts_only_leading_run() -> None:
    ix = KVIndex()
    ix.apply(A, stored(H[0], H[1], H[3], H[4], H[5]))  # h_2 missing (evicted)
    ix.apply(B, stored(H[4]))  # only a late block
    assert ix.lookup(H) == {A: 2}
    ix.check_integrity()


def test_removed_shortens_the_run(index: KVIndex) -> None:
    index.apply(A, removed(H[2]))
    index.check_integrity()
    assert index.lookup(H) == {A: 2, B: 3, C: 10}
    assert index.num_entries == 18
    index.apply(B, removed(H[0]))
    assert index.lookup(H) == {A: 2, C: 10}
    assert index.num_hashes == 10  # h_0 still held by A and C
    index.check_integrity()


def test_removed_last_holder_deletes_the_hash(index: KVIndex) -> None:
    index.apply(C, removed(*H[6:]))
    assert index.num_hashes == 6
    assert index.lookup(H) == {A: 6, B: 3, C: 6}
    index.check_integrity()


def test_remove_unknown_is_harmless(index: KVIndex) -> None:
    index.apply(B, removed(H[7], 424242, H[7]))  # held by others / by nobody / twice
    index.apply("newcomer", removed(H[0]))
    assert index.lookup(H) == {A: 6, B: 3, C: 10}
    assert index.num_entries == 19
    assert index.blocks_of("newcomer") == 0
    index.check_integrity()


def test_duplicates_are_idempotent(index: KVIndex) -> None:
    index.apply(A, stored(H[0], H[0], H[1]))
    index.apply(A, stored(*H[:6]))
    assert index.num_entries == 19
    assert index.lookup(H) == {A: 6, B: 3, C: 10}
    index.check_integrity()


def test_events_apply_in_order() -> None:
    ix = KVIndex()
    ix.apply(A, [*stored(H[0]), *removed(H[0]), *stored(H[0], H[1])])
    ix.apply(B, [*stored(H[0]), *cleared(), *stored(H[0])])
    assert ix.lookup(H) == {A: 2, B: 1}
    ix.check_integrity()


# ---- cleared, replace, purge ----------------------------------------------------------


def test_cleared_drops_only_that_worker(index: KVIndex) -> None:
    index.apply(C, cleared())
    index.check_integrity()
    assert index.lookup(H) == {A: 6, B: 3}
    assert index.blocks_of(C) == 0
    assert index.num_hashes == 6
    assert index.num_entries == 9
    assert C in index.workers()  # cleared, not gone: it keeps its slot
    index.apply(C, stored(H[0]))
    assert index.lookup(H) == {A: 6, B: 3, C: 1}
    index.check_integrity()


def test_replace_sets_the_whole_cache(index: KVIndex) -> None:
    index.replace(A, [H[0], H[1], 77, 78])
    index.check_integrity()
    assert index.lookup(H) == {A: 2, B: 3, C: 10}
    assert index.blocks_of(A) == 4
    assert index.num_entries == 17
    assert index.num_hashes == 12
    index.replace(A, [])
    assert index.lookup(H) == {B: 3, C: 10}
    assert index.num_hashes == 10
    index.check_integrity()


def test_replace_new_worker_and_duplicates() -> None:
    ix = KVIndex()
    ix.replace(A, iter([H[0], H[1], H[0]]))
    assert ix.lookup(H) == {A: 2}
    assert ix.num_entries == 2
    ix.apply(A, stored(H[2]))  # events go on after a replace
    assert ix.lookup(H) == {A: 3}
    ix.check_integrity()


def test_purge_frees_entries_and_reuses_slot(index: KVIndex) -> None:
    slots = index.num_slots
    index.purge(B)
    index.check_integrity()
    assert index.workers() == [A, C]
    assert index.lookup(H) == {A: 6, C: 10}
    index.apply("worker-d", stored(H[0]))
    assert index.num_slots == slots  # B's slot, not a new one
    assert index.lookup(H) == {A: 6, C: 10, "worker-d": 1}
    for w in (A, C, "worker-d"):
        index.purge(w)
        index.check_integrity()
    assert (index.num_entries, index.num_hashes, index.workers()) == (0, 0, [])
    index.purge("never-seen")  # harmless
    index.check_integrity()


def test_purged_worker_leaves_no_trace() -> None:
    ix = KVIndex()
    ix.apply(A, stored(*H))
    ix.purge(A)
    ix.apply(B, stored(H[0]))  # B takes A's slot: A's old bits must not show up as B's
    assert ix.lookup(H) == {B: 1}
    ix.check_integrity()


def test_many_workers_beyond_64_bits() -> None:
    ix = KVIndex()
    for i in range(100):
        ix.apply(f"w{i}", stored(*H[: i % 10 + 1]))
    got = ix.lookup(H)
    assert got == {f"w{i}": i % 10 + 1 for i in range(100)}
    ix.check_integrity()


def test_lookup_matches_naive_scan() -> None:
    rng = random.Random(7)
    ix, naive = KVIndex(), {f"w{i}": set[int]() for i in range(12)}
    for w, held in naive.items():
        for _ in range(3):
            hs = rng.sample(H, rng.randint(0, 10))
            ix.apply(w, stored(*hs) + removed(*hs[:2]))
            held |= set(hs)
            held -= set(hs[:2])
    ix.check_integrity()
    expected = {}
    for w, held in naive.items():
        n = next((i for i, h in enumerate(H) if h not in held), len(H))
        if n:
            expected[w] = n
    assert ix.lookup(H) == expected


# ---- churn ----------------------------------------------------------------------------


def test_churn_stays_bounded() -> None:
    """Workers come and go for 200 rounds; counts and slots return to the steady state."""
    rng = random.Random(0)
    shared = [rng.getrandbits(64) for _ in range(500)]  # a system prompt's chain
    ix = KVIndex()
    for i in range(4):
        ix.apply(f"stable-{i}", stored(*shared))
    steady = (ix.num_hashes, ix.num_entries, ix.num_slots)
    most_slots = 4
    for r in range(200):
        names = [f"r{r}-{j}" for j in range(rng.randint(1, 3))]
        for name in names:
            prefix = shared[: rng.randint(100, 500)]
            ix.apply(name, stored(*prefix))
            ix.replace(name, prefix + [rng.getrandbits(64) for _ in range(2000)])  # + private
        most_slots = max(most_slots, 4 + len(names))
        assert ix.num_slots <= most_slots  # freed slots are reused, not new ones taken
        assert ix.num_entries > steady[1] + 2000 * len(names)
        if r % 40 == 0:
            ix.check_integrity()
        for name in reversed(names):  # any order: the lowest free slot is reused first
            ix.purge(name)
        assert (ix.num_hashes, ix.num_entries) == steady[:2]
        assert ix.lookup(shared) == {f"stable-{i}": 500 for i in range(4)}
    assert ix.workers() == [f"stable-{i}" for i in range(4)]
    assert steady[2] < ix.num_slots <= 4 + 3
    ix.check_integrity()
