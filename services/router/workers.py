"""The router's view of the worker pools: live records from the registry, one gRPC channel
per worker, and the router's own count of requests in flight on each.

Least-loaded choice (KV-aware routing comes with the KV index): the worker with the fewest
requests in flight from this router plus those its last heartbeat reported waiting; ties
rotate so that equal workers share the work.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from services.pb import worker_pb2_grpc
from services.pb.events_pb2 import WorkerRecord
from services.registry import Registry

log = logging.getLogger(__name__)
DRAIN_GRACE_S = 60.0


@dataclass(slots=True)
class WorkerRef:
    record: WorkerRecord
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerStub
    in_flight: int = 0

    @property
    def worker_id(self) -> str:
        return self.record.worker_id

    def load(self) -> int:
        return self.in_flight + self.record.waiting


class WorkerSet:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.workers: dict[str, WorkerRef] = {}
        self._turn = itertools.count()
        self._closing: set[asyncio.Task[None]] = set()

    async def refresh(self) -> None:
        records = {r.worker_id: r for r in await asyncio.to_thread(self.registry.workers)}
        for worker_id in [w for w in self.workers if w not in records]:
            await self._drop(worker_id)
        for worker_id, record in records.items():
            ref = self.workers.get(worker_id)
            if ref is None or _restarted(ref.record, record):
                if ref is not None:
                    await self._drop(worker_id)
                channel = grpc.aio.insecure_channel(record.grpc_address)
                ref = WorkerRef(record, channel, worker_pb2_grpc.WorkerStub(channel))
                self.workers[worker_id] = ref
                log.info("worker %s (%s) at %s", worker_id, record.role, record.grpc_address)
            ref.record = record

    async def _drop(self, worker_id: str) -> None:
        """No new requests go to it; those in flight get a grace period to finish (a
        worker whose heartbeat is late may still be streaming)."""
        ref = self.workers.pop(worker_id)
        log.info("worker %s left", worker_id)
        task = asyncio.create_task(ref.channel.close(grace=DRAIN_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def serving(self, role: str) -> list[WorkerRef]:
        return [w for w in self.workers.values() if w.record.role in (role, "both")]

    def pick(self, role: str) -> WorkerRef | None:
        candidates = self.serving(role)
        if not candidates:
            return None
        turn = next(self._turn)
        ranked = sorted(
            enumerate(candidates),
            key=lambda ic: (ic[1].load(), (ic[0] - turn) % len(candidates)),
        )
        return ranked[0][1]

    @contextmanager
    def busy(self, ref: WorkerRef) -> Iterator[WorkerRef]:
        ref.in_flight += 1
        try:
            yield ref
        finally:
            ref.in_flight -= 1

    async def close(self) -> None:
        for ref in self.workers.values():
            await ref.channel.close(grace=None)
        self.workers.clear()
        for task in list(self._closing):
            task.cancel()


def _restarted(old: WorkerRecord, new: WorkerRecord) -> bool:
    return old.started_at_unix_ms != new.started_at_unix_ms or old.grpc_address != new.grpc_address
