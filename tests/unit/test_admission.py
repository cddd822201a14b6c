"""The router's admission (services/router/admission.py): places per pool from each
routable worker's batch size, 429 with Retry-After when they are taken, 503 with
Retry-After when no worker serves the pool, places given back whatever ends the request."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from services.pb.events_pb2 import WorkerRecord
from services.router.admission import PREFILL_BACKLOG_S, RETRY_AFTER_S, Admission
from services.router.backend import BackendError
from services.router.workers import WorkerRef


def _ref(max_num_seqs: int) -> WorkerRef:
    record = WorkerRecord(worker_id=f"decode-{max_num_seqs}", max_num_seqs=max_num_seqs)
    return WorkerRef(record, client=None)  # type: ignore[arg-type]  # never dialled


def test_a_full_pool_answers_429_and_a_freed_place_is_taken_again() -> None:
    admission = Admission(queue_per_seq=1.0)
    pool = [_ref(2), _ref(1)]  # a batch and as many waiting: 4 + 2 places
    assert admission.places(pool) == 6
    with ExitStack() as held:
        for _ in range(6):
            held.enter_context(admission.place("decode", pool))
        with pytest.raises(BackendError) as full:
            held.enter_context(admission.place("decode", pool))
        assert (full.value.status, full.value.retry_after_s) == (429, RETRY_AFTER_S)
        with admission.place("prefill", pool):  # another pool counts its own places
            pass
    assert admission.held == {"decode": 0, "prefill": 0}
    with pytest.raises(RuntimeError), admission.place("decode", pool):
        raise RuntimeError("the request failed")  # its place is given back all the same
    assert admission.held["decode"] == 0


def test_no_worker_is_a_503_and_a_negative_queue_accepts_everything() -> None:
    with pytest.raises(BackendError) as none, Admission().place("decode", []):
        pass
    assert (none.value.status, none.value.retry_after_s) == (503, RETRY_AFTER_S)
    unbounded = Admission(queue_per_seq=-1)
    with ExitStack() as held:
        for _ in range(100):
            held.enter_context(unbounded.place("decode", [_ref(1)]))


def test_prompt_tokens_waiting_are_bounded_by_the_measured_prefill_speed() -> None:
    rate: list[float | None] = [None]
    admission = Admission(queue_per_seq=1.0, prefill_rate=lambda: rate[0])
    pool = [_ref(64)]
    with admission.place("decode", pool, 10_000), admission.place("decode", pool, 10_000):
        pass  # not measured yet: any amount
    rate[0] = 1000.0  # tokens/s: PREFILL_BACKLOG_S of it is the bound
    bound = int(PREFILL_BACKLOG_S * 1000)
    with admission.place("decode", pool, bound + 5) as huge:  # alone: let in all the same
        with pytest.raises(BackendError) as full, admission.place("decode", pool, 10):
            pass
        assert (full.value.status, full.value.retry_after_s) == (429, RETRY_AFTER_S)
        huge.prefilled()  # its first token: its prompt no longer waits
        with admission.place("decode", pool, bound - 1) as next_one:
            assert admission.prompt_tokens == bound - 1
            next_one.prefilled()
            next_one.prefilled()  # counted once, however often it is said
    assert admission.prompt_tokens == 0 and admission.held["decode"] == 0
