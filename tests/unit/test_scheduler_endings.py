"""Endings: aborts from every state, and what update() reports.

The scheduler driven by hand (tests/helpers/scheduler.py).
"""

from __future__ import annotations

import pytest

from engine.request import FinishReason, SampledToken, Status
from tests.helpers.scheduler import (
    assert_done,
    make,
    mkreq,
    shape,
    step,
    update,
)

# ---- aborts -------------------------------------------------------------------------


def test_abort_from_waiting() -> None:
    sched = make(budget=4, max_seqs=1)
    a = mkreq("a", [1, 2], max_tokens=5)
    b = mkreq("b", [3, 4], max_tokens=5)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert b.status is Status.WAITING
    sched.finish(b, FinishReason.ABORT)
    assert b.finished and b.finish_reason == "abort"
    assert list(sched.waiting) == []
    sched.finish(a, FinishReason.ABORT)
    assert_done(sched)


def test_abort_mid_chunked_prefill() -> None:
    sched = make(budget=4)
    r = mkreq("r", list(range(1, 14)), max_tokens=5)
    sched.add(r)
    step(sched)
    step(sched)
    assert r.num_computed_tokens == 8 and r.block_ids == [0, 1]
    sched.finish(r, FinishReason.ABORT)
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
    sched.finish(a, FinishReason.ABORT)
    assert sched.pool.ref_counts[0] == sched.pool.ref_counts[1] == 1
    assert sched.running == [b]
    sched.finish(b, FinishReason.ABORT)
    assert_done(sched)


def test_abort_waiting_for_remote_kv() -> None:
    sched = make(budget=16, role="decode")
    r = mkreq("r", list(range(1, 7)), remote=True)
    sched.add(r)
    step(sched)
    assert r.status is Status.WAITING_FOR_REMOTE_KV and len(r.block_ids) == 2
    sched.finish(r, FinishReason.ABORT)
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
    sched.finish(r, FinishReason.ABORT)
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
    touched = update(sched, out, {"a": SampledToken(9, -0.25)})
    assert touched == [a]
    assert a.logprobs == [-0.25] and b.logprobs == []
    assert a.output_token_ids == [9]
    sched.pool.check_integrity()
    sched.finish(a, FinishReason.ABORT)
    sched.finish(b, FinishReason.ABORT)
    assert_done(sched)


def test_is_stop_reason_finishes_request() -> None:
    sched = make(budget=16)
    r = mkreq("r", [1, 2, 3], max_tokens=10)
    sched.add(r)
    out = step(sched, is_stop=lambda req: FinishReason.STOP if req.num_output_tokens == 2 else None)
    assert not r.finished
    assert out.chunks[0].samples
    step(sched, is_stop=lambda req: FinishReason.STOP if req.num_output_tokens == 2 else None)
    assert r.finished and r.finish_reason == "stop" and r.num_output_tokens == 2
    assert_done(sched)
