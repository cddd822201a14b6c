"""Prefix caching: shared blocks, partial and full hits, and caching turned off.

The scheduler driven by hand (tests/helpers/scheduler.py).
"""

from __future__ import annotations

from engine.hashing import chain_hashes
from engine.kv_events import BlockStored, KVEvent
from tests.helpers.scheduler import (
    BS,
    assert_done,
    drain,
    make,
    mkreq,
    shape,
    step,
)

# ---- prefix caching -------------------------------------------------------------------


def test_prefix_hit_shares_blocks_with_running_request() -> None:
    events: list[KVEvent] = []
    sched = make(budget=16, events=events)
    prompt_a = list(range(1, 11))  # 10 tokens: 2 full blocks
    a = mkreq("a", prompt_a, max_tokens=3)
    sched.add(a)
    assert shape(step(sched)) == [("a", 0, 10, True)]
    assert a.block_ids == [0, 1, 2]
    hashes = chain_hashes(prompt_a, BS)
    stored = [e for e in events if isinstance(e, BlockStored)]
    assert [(e.block_id, e.block_hash, e.parent_hash, e.token_ids) for e in stored] == [
        (0, hashes[0], None, (1, 2, 3, 4)),
        (1, hashes[1], hashes[0], (5, 6, 7, 8)),
    ]

    b = mkreq("b", prompt_a[:8] + [50, 51, 52], max_tokens=2)  # same first two blocks
    sched.add(b)
    out = step(sched)
    assert shape(out) == [("a", 10, 1, True), ("b", 8, 3, True)]
    assert b.num_cached_tokens == 8
    assert a.num_cached_tokens == 0
    assert b.block_ids[:2] == a.block_ids[:2] == [0, 1]
    assert b.block_ids == [0, 1, 3]
    assert sched.pool.ref_counts[0] == sched.pool.ref_counts[1] == 2
    assert sched.pool.ref_counts[2] == sched.pool.ref_counts[3] == 1
    drain(sched)
    assert a.finished and b.finished
    assert_done(sched)


def test_prefix_hit_after_first_request_finished() -> None:
    sched = make(budget=16)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks
    a = mkreq("a", prompt, max_tokens=1)
    sched.add(a)
    step(sched)
    assert a.finished
    assert sched.pool.is_idle()
    assert sched.pool.num_cached_blocks == 3
    b = mkreq("b", prompt[:12] + [99, 98], max_tokens=2)
    sched.add(b)
    out = step(sched)
    assert shape(out) == [("b", 12, 2, True)]
    assert b.num_cached_tokens == 12
    assert b.block_ids[:3] == [0, 1, 2]
    assert sched.pool.ref_counts[:3] == [1, 1, 1]
    drain(sched)
    assert_done(sched)


def test_partial_prefix_match_stops_at_first_differing_block() -> None:
    sched = make(budget=32)
    a = mkreq("a", list(range(1, 13)), max_tokens=1)  # 3 full blocks
    sched.add(a)
    step(sched)
    # Block 0 equal, block 1 differs, block 2 equal in content but its chain differs.
    b = mkreq("b", [1, 2, 3, 4, 0, 0, 0, 0, 9, 10, 11, 12, 13], max_tokens=2)
    sched.add(b)
    out = step(sched)
    assert shape(out) == [("b", 4, 9, True)]
    assert b.num_cached_tokens == 4
    assert b.block_ids[0] == 0
    assert 1 not in b.block_ids and 2 not in b.block_ids
    drain(sched)
    assert_done(sched)


def test_fully_cached_prompt_recomputes_last_block() -> None:
    sched = make(num_blocks=8, budget=16)
    prompt = list(range(1, 9))  # exactly 2 blocks
    a = mkreq("a", prompt, max_tokens=1)
    sched.add(a)
    assert shape(step(sched)) == [("a", 0, 8, True)]
    assert a.finished
    # Free queue now: [2, 3, 4, 5, 6, 7, 1, 0]; blocks 0 and 1 cached.
    b = mkreq("b", prompt, max_tokens=2)
    sched.add(b)
    out = step(sched)
    assert shape(out) == [("b", 4, 4, True)]
    assert b.num_cached_tokens == 4
    assert b.block_ids == [0, 2]  # the last block is a fresh private block
    assert sched.pool.ref_counts[:3] == [1, 0, 1]  # the shared block 1 is not written
    # Its content duplicates block 1, so it was not committed (commit returned False).
    assert sched.pool.block_hashes[2] is None
    assert sched.pool.lookup_prefix(chain_hashes(prompt, BS)) == [0, 1]
    drain(sched)
    assert_done(sched)


def test_prefix_caching_disabled() -> None:
    events: list[KVEvent] = []
    sched = make(budget=16, prefix=False, events=events)
    prompt = list(range(1, 10))
    for rid in ("a", "b"):
        r = mkreq(rid, prompt, max_tokens=1)
        sched.add(r)
        assert shape(step(sched)) == [(rid, 0, 9, True)]
        assert r.num_cached_tokens == 0
    assert events == []
    assert sched.pool.num_cached_blocks == 0
    assert_done(sched)


def test_requests_share_cached_blocks_only_under_the_same_salt() -> None:
    sched = make(budget=16)
    prompt = list(range(1, 11))  # 10 tokens: 2 full blocks
    for rid, salt in (("a", "tenant-a"), ("plain", ""), ("b", "tenant-b"), ("a2", "tenant-a")):
        req = mkreq(rid, prompt, max_tokens=1, salt=salt)
        sched.add(req)
        drain(sched)
        assert req.num_cached_tokens == (8 if rid == "a2" else 0), rid
    assert_done(sched)
