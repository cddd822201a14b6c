"""The scheduler driven by hand: a real BlockPool, no model. `update()` is fed made-up
tokens, and every step ends with the pool's integrity check."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from engine.block_pool import BlockPool
from engine.hashing import chain_hashes
from engine.kv_events import BlockStored, KVEvent
from engine.request import Request, Status
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput

BS = 4


def make(
    num_blocks: int = 64,
    *,
    budget: int = 16,
    max_seqs: int = 8,
    role: str = "both",
    chunked: bool = True,
    prefix: bool = True,
    events: list[KVEvent] | None = None,
) -> Scheduler:
    pool = BlockPool(num_blocks, on_event=events.append if events is not None else None)
    return Scheduler(
        pool,
        BS,
        max_seqs,
        budget,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=prefix,
        role=role,
    )


def mkreq(rid: str, prompt: list[int], max_tokens: int = 4, remote: bool = False) -> Request:
    return Request(
        rid,
        list(prompt),
        SamplingParams(max_tokens=max_tokens),
        arrival_time=0.0,
        remote_prefill=remote,
    )


def stop_at_max(req: Request) -> str | None:
    return "length" if req.num_output_tokens >= req.params.max_tokens else None


def next_token(req: Request) -> int:
    """A made-up sample that never collides with the small prompt ids used here."""
    return 10_000 + req.num_tokens


def step(
    sched: Scheduler, is_stop: Callable[[Request], str | None] = stop_at_max
) -> SchedulerOutput:
    out = sched.schedule()
    assert out.num_tokens <= sched.max_num_batched_tokens
    sampled = {c.request.request_id: (next_token(c.request), None) for c in out.chunks if c.samples}
    sched.update(out, sampled, is_stop)
    sched.pool.check_integrity()
    return out


def shape(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(c.request.request_id, c.start, c.num_tokens, c.samples) for c in out.chunks]


def drain(sched: Scheduler, max_steps: int = 200) -> int:
    steps = 0
    while sched.has_unfinished():
        step(sched)
        steps += 1
        assert steps <= max_steps, "scheduler made no progress"
    return steps


def assert_done(sched: Scheduler) -> None:
    assert not sched.has_unfinished()
    assert not sched.running and not sched.waiting and not sched.remote and not sched.held
    sched.pool.check_integrity()
    assert sched.pool.is_idle()


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
        sched.finish(r, "abort")
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
        sampled = {c.request.request_id: (rng.randrange(50), None) for c in out.chunks if c.samples}
        sched.update(out, sampled, stop_at_max)
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


# ---- roles -----------------------------------------------------------------------------


def test_prefill_role_holds_blocks_after_first_token() -> None:
    sched = make(budget=16, role="prefill")
    r = mkreq("p", [1, 2, 3, 4, 5, 6], max_tokens=8)
    sched.add(r)
    out = step(sched)
    assert shape(out) == [("p", 0, 6, True)]
    assert r.status is Status.HELD
    assert r.finish_reason == "remote_decode"
    assert sched.held == {"p": r}
    assert r.output_token_ids == [10_006]
    assert r.block_ids == [0, 1]
    assert sched.pool.ref_counts[:2] == [1, 1]
    assert not sched.has_unfinished()
    assert sched.running == []
    assert not sched.pool.is_idle()
    assert sched.schedule().chunks == []
    assert sched.release_held("p")
    assert r.status is Status.FINISHED and r.block_ids == []
    assert not sched.release_held("p")
    assert not sched.release_held("unknown")
    assert_done(sched)


def test_prefill_role_stop_on_first_token_is_not_held() -> None:
    sched = make(budget=16, role="prefill")
    r = mkreq("p", [1, 2, 3], max_tokens=1)
    sched.add(r)
    step(sched)
    assert r.finished and r.finish_reason == "length"
    assert sched.held == {}
    assert_done(sched)


def test_decode_role_remote_prefill_then_kv_ready() -> None:
    sched = make(budget=16, role="decode")
    prompt = list(range(1, 11))  # 10 tokens
    r = mkreq("d", prompt, max_tokens=3, remote=True)
    sched.add(r)
    out = step(sched)
    assert out.chunks == []
    assert r.status is Status.WAITING_FOR_REMOTE_KV
    assert sched.remote == {"d": r}
    assert r.block_ids == [0, 1, 2]
    assert r.num_computed_tokens == 0
    assert sched.has_unfinished() and sched.num_active() == 1
    assert sched.schedule().chunks == []  # nothing to do until the KV lands
    assert r.block_ids == [0, 1, 2]

    got = sched.remote_kv_ready("d", 4242, kv_valid=True)
    assert got is r
    assert r.status is Status.RUNNING and sched.running == [r]
    assert sched.remote == {}
    assert r.num_computed_tokens == 10
    assert r.output_token_ids == [4242]
    assert sched.pool.lookup_prefix(chain_hashes(prompt, BS)) == [0, 1]  # full blocks cached
    assert shape(step(sched)) == [("d", 10, 1, True)]
    assert r.block_ids == [0, 1, 2]
    step(sched)
    assert r.finished and r.output_token_ids == [4242, 10_011, 10_012]
    assert_done(sched)


def test_decode_role_failed_transfer_recomputes_prompt() -> None:
    sched = make(budget=16, role="decode")
    r = mkreq("d", list(range(1, 11)), max_tokens=2, remote=True)
    sched.add(r)
    step(sched)
    blocks = list(r.block_ids)
    sched.remote_kv_ready("d", None, kv_valid=False)
    assert r.status is Status.RUNNING and not r.remote_prefill
    assert r.num_computed_tokens == 0 and r.num_output_tokens == 0
    out = step(sched)
    assert shape(out) == [("d", 0, 10, True)]
    assert r.block_ids == blocks  # the blocks allocated for the prompt are reused
    step(sched)
    assert r.finished and r.num_output_tokens == 2
    assert_done(sched)


def test_decode_role_late_read_recomputes_but_keeps_the_sent_first_token() -> None:
    sched = make(budget=16, role="decode")
    r = mkreq("d", list(range(1, 11)), max_tokens=3, remote=True)
    sched.add(r)
    step(sched)
    sched.remote_kv_ready("d", 4242, kv_valid=False)
    # The client already has 4242: it is kept, and computed with the prompt, not resampled.
    assert r.output_token_ids == [4242] and r.num_computed_tokens == 0
    assert shape(step(sched)) == [("d", 0, 11, True)]
    drain(sched)
    assert r.finished and r.output_token_ids[0] == 4242 and r.num_output_tokens == 3
    assert_done(sched)


def test_decode_role_remote_request_with_local_prefix_hit() -> None:
    sched = make(budget=16, role="decode")
    prompt = list(range(1, 11))
    a = mkreq("a", prompt[:8] + [77], max_tokens=1)
    sched.add(a)
    step(sched)
    assert a.finished
    r = mkreq("d", prompt, max_tokens=2, remote=True)
    sched.add(r)
    step(sched)
    assert r.status is Status.WAITING_FOR_REMOTE_KV
    assert r.num_cached_tokens == 8 and r.num_computed_tokens == 8
    assert r.block_ids[:2] == [0, 1]  # a's cached (now free) prompt blocks
    assert len(r.block_ids) == 3
    sched.remote_kv_ready("d", None, kv_valid=False)
    assert shape(step(sched)) == [("d", 8, 2, True)]
    drain(sched)
    assert r.finished
    assert_done(sched)


def test_decode_role_preempted_after_kv_ready_is_recomputed_locally() -> None:
    sched = make(num_blocks=3, budget=16, role="decode")
    a = mkreq("a", [1, 2, 3, 4], max_tokens=4)
    r = mkreq("r", [5, 6, 7, 8], max_tokens=4, remote=True)
    sched.add(a)
    sched.add(r)
    assert shape(step(sched)) == [("a", 0, 4, True)]
    assert (a.block_ids, r.block_ids) == ([0], [1])
    sched.remote_kv_ready("r", 77, kv_valid=True)
    out = step(sched)  # a takes the last block; r (admitted last) is preempted
    assert out.preempted == ["r"]
    # Its KV already arrived once: it must now be recomputed here, not wait for a peer.
    assert r.status is not Status.WAITING_FOR_REMOTE_KV
    drain(sched, max_steps=50)
    assert r.finished and r.output_token_ids[0] == 77 and r.num_output_tokens == 4
    assert_done(sched)


# ---- aborts -------------------------------------------------------------------------


def test_abort_from_waiting() -> None:
    sched = make(budget=4, max_seqs=1)
    a = mkreq("a", [1, 2], max_tokens=5)
    b = mkreq("b", [3, 4], max_tokens=5)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert b.status is Status.WAITING
    sched.finish(b, "abort")
    assert b.finished and b.finish_reason == "abort"
    assert list(sched.waiting) == []
    sched.finish(a, "abort")
    assert_done(sched)


def test_abort_mid_chunked_prefill() -> None:
    sched = make(budget=4)
    r = mkreq("r", list(range(1, 14)), max_tokens=5)
    sched.add(r)
    step(sched)
    step(sched)
    assert r.num_computed_tokens == 8 and r.block_ids == [0, 1]
    sched.finish(r, "abort")
    assert r.finished and r.finish_reason == "abort" and r.block_ids == []
    assert sched.pool.num_cached_blocks == 2  # computed blocks stay in the prefix cache
    assert_done(sched)


def test_abort_while_decoding_with_shared_blocks() -> None:
    sched = make(budget=32)
    prompt = list(range(1, 10))
    a = mkreq("a", prompt, max_tokens=9)
    sched.add(a)
    step(sched)
    b = mkreq("b", prompt, max_tokens=9)
    sched.add(b)
    step(sched)
    assert sched.pool.ref_counts[0] == sched.pool.ref_counts[1] == 2
    sched.finish(a, "abort")
    assert sched.pool.ref_counts[0] == sched.pool.ref_counts[1] == 1
    assert sched.running == [b]
    sched.finish(b, "abort")
    assert_done(sched)


def test_abort_waiting_for_remote_kv() -> None:
    sched = make(budget=16, role="decode")
    r = mkreq("r", list(range(1, 7)), remote=True)
    sched.add(r)
    step(sched)
    assert r.status is Status.WAITING_FOR_REMOTE_KV and len(r.block_ids) == 2
    sched.finish(r, "abort")
    assert r.finished and r.block_ids == []
    with pytest.raises(KeyError):
        sched.remote_kv_ready("r", 1, kv_valid=True)
    assert_done(sched)


def test_abort_held_request() -> None:
    sched = make(budget=16, role="prefill")
    r = mkreq("r", [1, 2, 3, 4, 5])
    sched.add(r)
    step(sched)
    assert r.status is Status.HELD
    sched.finish(r, "abort")
    assert r.finished and r.finish_reason == "abort"
    assert sched.held == {}
    assert not sched.release_held("r")
    assert_done(sched)


# ---- update details ----------------------------------------------------------------


def test_update_records_logprobs_and_returns_touched() -> None:
    sched = make(budget=4)
    a = mkreq("a", [1, 2], max_tokens=2)
    b = mkreq("b", [3, 4, 5, 6, 7], max_tokens=2)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert shape(out) == [("a", 0, 2, True), ("b", 0, 2, False)]
    touched = sched.update(out, {"a": (9, -0.25)}, stop_at_max)
    assert touched == [a]
    assert a.logprobs == [-0.25] and b.logprobs == []
    assert a.output_token_ids == [9]
    sched.pool.check_integrity()
    sched.finish(a, "abort")
    sched.finish(b, "abort")
    assert_done(sched)


def test_is_stop_reason_finishes_request() -> None:
    sched = make(budget=16)
    r = mkreq("r", [1, 2, 3], max_tokens=10)
    sched.add(r)
    out = step(sched, is_stop=lambda req: "stop" if req.num_output_tokens == 2 else None)
    assert not r.finished
    assert out.chunks[0].samples
    step(sched, is_stop=lambda req: "stop" if req.num_output_tokens == 2 else None)
    assert r.finished and r.finish_reason == "stop" and r.num_output_tokens == 2
    assert_done(sched)
