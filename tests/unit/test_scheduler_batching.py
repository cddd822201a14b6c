"""The token budget and chunked prefill: who gets how many tokens each step.

The scheduler driven by hand (tests/helpers/scheduler.py).
"""

from __future__ import annotations

import random

from engine.request import FinishReason, SampledToken, Status
from tests.helpers.scheduler import (
    BS,
    assert_done,
    drain,
    make,
    mkreq,
    shape,
    step,
    update,
)

# ---- the token budget and chunked prefill -----------------------------------------


def test_single_request_prefill_then_decode() -> None:
    sched = make(budget=16)
    r = mkreq("a", [1, 2, 3, 4, 5, 6], max_tokens=3)
    sched.add(r)
    assert sched.has_unfinished()
    out = step(sched)
    assert shape(out) == [("a", 0, 6, True)]
    assert r.status is Status.RUNNING
    assert r.block_ids == [0, 1]
    assert r.num_computed_tokens == 6
    assert r.output_token_ids == [10_006]
    assert shape(step(sched)) == [("a", 6, 1, True)]
    assert shape(step(sched)) == [("a", 7, 1, True)]
    assert r.finished and r.finish_reason == "length"
    assert r.output_token_ids == [10_006, 10_007, 10_008]
    assert r.block_ids == []
    assert sched.schedule().chunks == []
    assert_done(sched)


def test_chunked_prefill_exact_chunks_and_blocks() -> None:
    sched = make(budget=8)
    r = mkreq("long", list(range(1, 21)), max_tokens=2)  # 20 tokens
    sched.add(r)
    out = step(sched)
    assert shape(out) == [("long", 0, 8, False)]
    assert r.block_ids == [0, 1]
    assert r.num_computed_tokens == 8 and r.num_output_tokens == 0
    assert r.num_committed_blocks == 2
    assert shape(step(sched)) == [("long", 8, 8, False)]
    assert r.block_ids == [0, 1, 2, 3]
    assert shape(step(sched)) == [("long", 16, 4, True)]
    assert r.block_ids == [0, 1, 2, 3, 4]
    assert r.num_output_tokens == 1
    # 21 tokens now: the decode step needs a sixth block.
    assert shape(step(sched)) == [("long", 20, 1, True)]
    assert r.finished
    assert_done(sched)


def test_budget_shared_across_requests() -> None:
    sched = make(budget=8)
    a = mkreq("a", [1] * 5, max_tokens=3)
    b = mkreq("b", [2] * 7, max_tokens=3)
    c = mkreq("c", [3] * 3, max_tokens=3)
    for r in (a, b, c):
        sched.add(r)
    out = step(sched)
    assert shape(out) == [("a", 0, 5, True), ("b", 0, 3, False)]
    assert out.num_tokens == 8
    assert c.status is Status.WAITING
    out = step(sched)
    assert shape(out) == [("a", 5, 1, True), ("b", 3, 4, True), ("c", 0, 3, True)]
    assert out.num_tokens == 8
    out = step(sched)
    assert shape(out) == [("a", 6, 1, True), ("b", 7, 1, True), ("c", 3, 1, True)]
    assert a.finished
    assert shape(step(sched)) == [("b", 8, 1, True), ("c", 4, 1, True)]
    assert_done(sched)


def test_chunked_prefill_disabled_waits_for_room() -> None:
    sched = make(budget=8, chunked=False)
    a = mkreq("a", [1] * 6, max_tokens=2)
    b = mkreq("b", [2] * 5, max_tokens=2)
    sched.add(a)
    sched.add(b)
    assert shape(step(sched)) == [("a", 0, 6, True)]
    assert b.status is Status.WAITING and b.block_ids == []
    assert shape(step(sched)) == [("a", 6, 1, True), ("b", 0, 5, True)]
    assert shape(step(sched)) == [("b", 5, 1, True)]
    assert_done(sched)


def test_decodes_are_never_starved_by_a_long_prefill() -> None:
    sched = make(budget=8)
    a = mkreq("a", [1, 1, 1], max_tokens=20)
    c = mkreq("c", [2, 2, 2], max_tokens=20)
    sched.add(a)
    sched.add(c)
    assert shape(step(sched)) == [("a", 0, 3, True), ("c", 0, 3, True)]
    long = mkreq("long", list(range(100, 130)), max_tokens=2)  # 30 tokens
    sched.add(long)
    # 8 tokens a step: one each for a and c first, then 6 of the long prompt.
    for k in range(5):
        out = step(sched)
        assert shape(out) == [
            ("a", 3 + k, 1, True),
            ("c", 3 + k, 1, True),
            ("long", 6 * k, 6, k == 4),
        ]
        assert out.num_tokens == 8
    assert long.num_output_tokens == 1
    assert shape(step(sched)) == [("a", 8, 1, True), ("c", 8, 1, True), ("long", 30, 1, True)]
    assert long.finished
    for r in (a, c):
        assert r.num_output_tokens == 7
        sched.finish(r, FinishReason.ABORT)
    assert_done(sched)


def test_budget_never_exceeded_and_decodes_progress_randomised() -> None:
    rng = random.Random(1234)
    budget = 12
    sched = make(num_blocks=12, budget=budget, max_seqs=5)
    reqs = []
    for i in range(14):
        prompt = [rng.randrange(50) for _ in range(rng.randint(1, 30))]
        reqs.append(mkreq(f"r{i}", prompt, max_tokens=rng.randint(1, 8)))
    pending = list(reqs)
    steps = 0
    while pending or sched.has_unfinished():
        if pending and rng.random() < 0.5:
            sched.add(pending.pop(0))
        decoding = [r for r in sched.running if r.num_tokens - r.num_computed_tokens == 1]
        out = sched.schedule()
        assert out.num_tokens <= budget
        assert sched.num_active() <= 5
        got = {c.request.request_id for c in out.chunks}
        # Every request decoding at the start of the step gets its token, unless it was
        # preempted this step to make room.
        for r in decoding:
            assert r.request_id in got or r.request_id in out.preempted
        for c in out.chunks:
            assert c.num_tokens >= 1
            assert c.start == c.request.num_computed_tokens
            assert len(c.request.block_ids) * BS >= c.start + c.num_tokens
        sampled = {
            c.request.request_id: SampledToken(rng.randrange(50)) for c in out.chunks if c.samples
        }
        update(sched, out, sampled)
        sched.pool.check_integrity()
        steps += 1
        assert steps < 500
    for r in reqs:
        assert r.finished and r.finish_reason == "length"
        assert r.num_output_tokens == r.params.max_tokens
    assert sched.num_preemptions > 0  # the small pool forced some: that path ran too
    assert_done(sched)


def test_max_num_seqs_caps_running_requests() -> None:
    sched = make(budget=64, max_seqs=2)
    reqs = [mkreq(f"r{i}", [i + 1] * 3, max_tokens=2) for i in range(3)]
    for r in reqs:
        sched.add(r)
    out = step(sched)
    assert [c.request.request_id for c in out.chunks] == ["r0", "r1"]
    assert reqs[2].status is Status.WAITING
    assert sched.num_active() == 2
    out = step(sched)  # r0 and r1 finish this step; r2 could not be admitted before it
    assert [c.request.request_id for c in out.chunks] == ["r0", "r1"]
    assert reqs[0].finished and reqs[1].finished
    assert shape(step(sched)) == [("r2", 0, 3, True)]
    drain(sched)
    assert_done(sched)
