"""Roles: a prefill worker holds blocks for a peer; a decode worker waits for remote KV.

The scheduler driven by hand (tests/helpers/scheduler.py).
"""

from __future__ import annotations

from engine.hashing import chain_hashes
from engine.request import Status
from tests.helpers.scheduler import (
    BS,
    assert_done,
    drain,
    make,
    mkreq,
    shape,
    step,
)

# ---- roles -----------------------------------------------------------------------------


def test_prefill_role_holds_blocks_after_first_token() -> None:
    sched = make(budget=16, role="prefill")
    r = mkreq("p", [1, 2, 3, 4, 5, 6], max_tokens=8)
    sched.add(r)
    out = step(sched)
    assert shape(out) == [("p", 0, 6, True)]
    assert r.status is Status.HELD
    assert r.finish_reason is None  # held is a status, not a finish reason
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
