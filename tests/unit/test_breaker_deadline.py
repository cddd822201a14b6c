"""The router's two guards on a worker's calls: the circuit breaker (closed, open for a
cooldown after THRESHOLD failures in a row, half-open after it) and the prefill deadline
(from the prompt and the pool's measured speed, or fixed)."""

from __future__ import annotations

import asyncio

import pytest

from services.pb.events_pb2 import WorkerRecord
from services.router import breaker
from services.router.breaker import COOLDOWN_S, THRESHOLD, Breaker
from services.router.prefill_deadline import FLOOR_S, SLACK, UNMEASURED_S, PrefillDeadline
from services.router.workers import WorkerSet


def test_the_breaker_opens_after_failures_in_a_row_and_closes_on_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(breaker.time, "monotonic", lambda: now[0])
    b = Breaker()
    for _ in range(THRESHOLD - 1):
        assert b.record(ok=False) is None
    assert b.record(ok=True) is None and b.failures == 0  # a success breaks the run
    changes = [b.record(ok=False) for _ in range(THRESHOLD)]
    assert changes == [None] * (THRESHOLD - 1) + ["opened"] and not b.allows()
    assert b.record(ok=False) is None  # a call sent before it opened: no longer open
    now[0] += COOLDOWN_S
    assert b.allows()  # half-open: calls go through again
    assert b.record(ok=False) == "opened" and not b.allows()  # and one failure reopens it
    now[0] += COOLDOWN_S
    assert b.record(ok=True) == "closed" and b.allows() and b.failures == 0


def test_the_prefill_deadline_follows_the_measured_speed() -> None:
    d = PrefillDeadline()
    assert d.for_tokens(1000) == UNMEASURED_S  # a cold pool is not judged yet
    d.observe(8, 10.0)  # too short to say anything of speed
    assert d.tokens_per_s is None
    d.observe(1000, 2.0)
    assert d.tokens_per_s == 500.0
    assert d.for_tokens(1000) == pytest.approx(FLOOR_S + SLACK * 2.0)
    d.observe(1000, 10.0)  # slower now: the average moves, not jumps
    assert 100.0 < d.tokens_per_s < 500.0
    assert PrefillDeadline(fixed_s=7.5).for_tokens(10**6) == 7.5
    with pytest.raises(ValueError):
        PrefillDeadline(fixed_s=0)


def test_a_breaker_outlives_an_absence_from_the_registry_not_a_restart() -> None:
    class Registry:  # what the router reads, scripted
        def __init__(self) -> None:
            self.records: list[WorkerRecord] = []

        def workers(self) -> list[WorkerRecord]:
            return self.records

    def record(started: int) -> WorkerRecord:
        return WorkerRecord(worker_id="prefill-1", role="prefill", started_at_unix_ms=started,
                            grpc_address="127.0.0.1:1")  # fmt: skip

    async def run() -> None:
        registry = Registry()
        workers = WorkerSet(registry)  # type: ignore[arg-type]
        registry.records = [record(started=1)]
        await workers.refresh()
        tripped = workers.workers["prefill-1"].breaker
        for _ in range(THRESHOLD):
            tripped.record(ok=False)
        registry.records = []  # frozen past its TTL: its record expired
        await workers.refresh()
        registry.records = [record(started=1)]  # back, the same process
        await workers.refresh()
        assert workers.workers["prefill-1"].breaker is tripped and not tripped.allows()
        registry.records = [record(started=2)]  # restarted: a new process, a fresh start
        await workers.refresh()
        assert workers.workers["prefill-1"].breaker.allows()
        await workers.close()

    asyncio.run(run())
