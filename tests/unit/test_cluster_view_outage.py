"""The router's worker set through a Redis outage and an empty restarted Redis: the workers
last seen stay while the registry cannot be read, and for one TTL after it can again
(each worker lists itself again at its next heartbeat); after that, an absent one goes."""

from __future__ import annotations

import asyncio

import pytest
import redis

from services.pb.events_pb2 import WorkerRecord
from services.router import cluster_view
from services.router.cluster_view import ClusterView
from services.router.metrics import RouterMetrics
from services.router.workers import WorkerSet


class FakeRegistry:
    """What WorkerSet reads: a list of records, or a Redis that is down."""

    def __init__(self, *worker_ids: str) -> None:
        self.ids: list[str] | None = list(worker_ids)  # None: every read fails

    def workers(self) -> list[WorkerRecord]:
        if self.ids is None:
            raise redis.ConnectionError("Error 111 connecting: Connection refused.")
        return [
            WorkerRecord(
                worker_id=w, role="decode", grpc_address="127.0.0.1:1", started_at_unix_ms=1
            )
            for w in self.ids
        ]


def _view(registry: FakeRegistry) -> ClusterView:
    return ClusterView(WorkerSet(registry), RouterMetrics("test-model"))  # type: ignore[arg-type]


def test_workers_last_seen_outlive_an_outage_and_an_empty_restarted_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_view, "REJOIN_S", 0.3)

    async def run() -> None:
        registry = FakeRegistry("d-0", "d-1")
        view = _view(registry)
        await view.refresh()
        registry.ids = None  # Redis killed
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                await view.refresh()
        assert set(view.workers.workers) == {"d-0", "d-1"}
        registry.ids = []  # restarted, empty: nobody has heartbeated yet
        await view.refresh()
        registry.ids = ["d-0"]  # d-0's heartbeat came first
        await view.refresh()
        assert set(view.workers.workers) == {"d-0", "d-1"}
        await asyncio.sleep(0.35)  # one TTL (here 0.3 s) without d-1: it is gone
        await view.refresh()
        assert set(view.workers.workers) == {"d-0"}
        await view.close()

    asyncio.run(run())


def test_without_an_outage_a_worker_missing_from_the_registry_goes_at_once() -> None:
    async def run() -> None:
        registry = FakeRegistry("d-0", "d-1")
        view = _view(registry)
        await view.refresh()
        registry.ids = ["d-0"]  # d-1 stopped and removed its record
        await view.refresh()
        assert set(view.workers.workers) == {"d-0"}
        await view.close()

    asyncio.run(run())
