"""Preemption: the most recently admitted request gives its blocks back.

The scheduler driven by hand (tests/helpers/scheduler.py).
"""

from __future__ import annotations

from engine.request import Status
from tests.helpers.scheduler import (
    assert_done,
    drain,
    make,
    mkreq,
    shape,
    step,
)

# ---- preemption -----------------------------------------------------------------------


def test_preemption_of_most_recent_request_and_recovery() -> None:
    sched = make(num_blocks=4, budget=16)
    a = mkreq("a", [1, 2, 3, 4], max_tokens=7)
    b = mkreq("b", [5, 6, 7, 8], max_tokens=7)
    sched.add(a)
    sched.add(b)
    assert shape(step(sched)) == [("a", 0, 4, True), ("b", 0, 4, True)]
    assert (a.block_ids, b.block_ids) == ([0], [1])
    step(sched)  # 5th token of each: a second block each
    assert (a.block_ids, b.block_ids) == ([0, 2], [1, 3])
    assert sched.pool.num_free_blocks == 0
    for k in range(3):  # tokens 6..8 fit the two blocks
        assert shape(step(sched)) == [("a", 5 + k, 1, True), ("b", 5 + k, 1, True)]
    assert a.num_tokens == b.num_tokens == 9
    b_outputs = b.output_token_ids

    # Both need a third block; none is free. b (admitted last) is preempted.
    out = step(sched)
    assert out.preempted == ["b"]
    assert shape(out) == [("a", 8, 1, True)]
    assert b.status is Status.WAITING
    assert list(sched.waiting) == [b]
    assert sched.running == [a]
    assert b.block_ids == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and sched.num_preemptions == 1
    assert b.output_token_ids == b_outputs  # generated tokens are kept
    # b's blocks were freed tail first: a took block 3, block 1 is free and still cached.
    assert a.block_ids == [0, 2, 3]
    assert sched.pool.ref_counts == [1, 0, 1, 1]
    assert sched.pool.block_hashes[1] is not None and sched.pool.block_hashes[3] is None

    # b needs 2 blocks beyond its cached one, only 1 is free: it waits while a finishes.
    out = step(sched)
    assert shape(out) == [("a", 9, 1, True)]
    assert a.finished and b.status is Status.WAITING

    # b is recomputed (prompt and outputs), reusing its still-cached first block.
    out = step(sched)
    assert shape(out) == [("b", 4, 5, True)]
    # Free queue was [1, 3, 2, 0]: b takes cached block 1 back, then allocates 3 and 2.
    assert b.block_ids == [1, 3, 2]
    assert b.num_cached_tokens == 0  # counted only on first admission
    assert b.num_output_tokens == 6
    assert b.output_token_ids[:5] == b_outputs
    drain(sched)
    assert b.finished and b.num_output_tokens == 7
    assert sched.num_preemptions == 1
    assert_done(sched)


def test_preempting_the_growing_request_itself() -> None:
    # A lone request that cannot grow is preempted itself and resumes once room frees up.
    sched = make(num_blocks=2, budget=16, role="prefill")
    h = mkreq("h", [7, 7, 7, 7], max_tokens=2)
    sched.add(h)
    step(sched)
    assert h.status is Status.HELD and h.block_ids == [0]
    # A HELD request pins block 0; switch roles so the next request decodes normally.
    sched.role = "both"
    a = mkreq("a", [1, 2, 3], max_tokens=4)
    sched.add(a)
    assert shape(step(sched)) == [("a", 0, 3, True)]
    assert a.block_ids == [1]
    step(sched)  # token 4 fits
    out = step(sched)  # token 5 needs a block, none free, a is the only running request
    assert out.preempted == ["a"]
    assert out.chunks == []
    assert a.status is Status.WAITING and a.block_ids == []
    assert sched.schedule().chunks == []  # still no room
    assert sched.release_held("h")
    out = step(sched)
    assert shape(out) == [("a", 4, 1, True)]  # first block cached: only token 5 recomputed
    drain(sched)
    assert a.finished and a.num_output_tokens == 4
    assert_done(sched)


def test_admission_never_preempts_running_requests() -> None:
    sched = make(num_blocks=3, budget=16)
    a = mkreq("a", [1] * 8, max_tokens=3)
    sched.add(a)
    step(sched)
    assert a.block_ids == [0, 1]
    b = mkreq("b", [2] * 6, max_tokens=1)  # needs 2 blocks, 1 free
    sched.add(b)
    out = step(sched)
    assert shape(out) == [("a", 8, 1, True)]
    assert out.preempted == []
    assert b.status is Status.WAITING
    drain(sched)
    assert b.finished
    assert_done(sched)
