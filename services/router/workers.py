"""The router's view of the worker pools: live records from the registry, one WorkerClient
(a gRPC channel) per worker, and the router's own count of requests (and prefill tokens)
in flight on each.
Which worker gets a prompt is services/router/routing.py's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord
from services.router.breaker import Breaker
from services.router.worker_client import WorkerClient
from services.wire import KVDump

log = logging.getLogger(__name__)
DRAIN_GRACE_S = 60.0
FAILURES_TO_EXCLUDE = 2  # health checks failed in a row that take a worker out of routing


@dataclass(slots=True)
class WorkerRef:
    record: WorkerRecord
    client: WorkerClient
    in_flight: int = 0
    in_flight_tokens: int = 0  # prefill tokens sent and not answered yet
    failed_checks: int = 0  # health checks failed in a row (services/router/health_checks.py)
    breaker: Breaker = field(default_factory=Breaker)  # of its calls (breaker.py)

    @property
    def queued_tokens(self) -> int:
        """Prefill tokens waiting on the worker: the larger of its heartbeat's count and the
        tokens this router sent it that are not answered yet (fresher)."""
        return max(self.record.queued_prefill_tokens, self.in_flight_tokens)

    @property
    def routable(self) -> bool:
        """Out of routing while its last FAILURES_TO_EXCLUDE health checks failed."""
        return self.failed_checks < FAILURES_TO_EXCLUDE

    @property
    def worker_id(self) -> str:
        return self.record.worker_id

    @property
    def tp_size(self) -> int:
        """Its tensor-parallel size: the processes its KV heads are shared out over."""
        return 1 + len(self.record.nixl_ranks)

    @property
    def kv_layout(self) -> tuple[int, int]:
        """The model's KV heads, and the heads of one head group of a rank's cache. A
        decode worker reads a prefill worker's KV where the two agree: each decode rank
        reads whole head groups from the prefill ranks that hold them
        (engine/transfer/heads.py), whatever the two sizes."""
        r = self.record
        return r.kv_heads * self.tp_size, r.kv_heads // max(1, r.kv_head_groups)


class Prefilling:
    """Prompt tokens a call has a worker prefill, counted in its `in_flight_tokens` until
    `done()` (idempotent)."""

    def __init__(self, ref: WorkerRef, tokens: int) -> None:
        self.ref, self.tokens = ref, tokens
        ref.in_flight_tokens += tokens

    def done(self) -> None:
        self.ref.in_flight_tokens -= self.tokens
        self.tokens = 0


class WorkerSet:
    def __init__(
        self, registry: Registry, token: str | None = None, ca: bytes | None = None
    ) -> None:
        """`token`: the cluster token every call to a worker carries; `ca`: workers'
        certificates are checked against it (TLS), None: plain gRPC."""
        self.registry = registry
        self._token, self._ca = token, ca
        # worker id -> (its process's start time, its breaker): see _breaker
        self._breakers: dict[str, tuple[int, Breaker]] = {}
        self.workers: dict[str, WorkerRef] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def refresh(self, keep_absent: bool = False) -> None:
        """Take the registry's records; `keep_absent`: workers missing from it stay (a
        Redis that came back empty lists each worker again at its next heartbeat)."""
        records = {r.worker_id: r for r in await asyncio.to_thread(self.registry.workers)}
        for worker_id in [w for w in self.workers if w not in records and not keep_absent]:
            await self._drop(worker_id)
        for worker_id, record in records.items():
            ref = self.workers.get(worker_id)
            if ref is None or _restarted(ref.record, record):
                if ref is not None:
                    await self._drop(worker_id)
                ref = WorkerRef(
                    record,
                    WorkerClient(record.grpc_address, self._token, self._ca, record.stream_address),
                    breaker=self._breaker(record),
                )
                self.workers[worker_id] = ref
                log.info("worker %s (%s) at %s", worker_id, record.role, record.grpc_address)
            ref.record = record

    def _breaker(self, record: WorkerRecord) -> Breaker:
        """A worker's breaker outlives its absences from the registry (one frozen past its
        TTL comes back with the failures it had: flapping does not reset it); a restarted
        process (a new start time) starts afresh."""
        started, breaker = self._breakers.get(record.worker_id, (None, None))
        if breaker is None or started != record.started_at_unix_ms:
            breaker = Breaker()
            self._breakers[record.worker_id] = (record.started_at_unix_ms, breaker)
        return breaker

    async def _drop(self, worker_id: str) -> None:
        """No new requests go to it; those in flight get a grace period to finish (a
        worker whose heartbeat is late may still be streaming)."""
        ref = self.workers.pop(worker_id)
        log.info("worker %s left", worker_id)
        task = asyncio.create_task(ref.client.close(grace_s=DRAIN_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def serving(self, role: str) -> list[WorkerRef]:
        """Workers that serve `role`, pass their health checks and whose breaker lets calls
        through, in worker id order: round-robin then takes the same turns in every router."""
        refs = [
            w
            for w in self.workers.values()
            if w.routable and w.breaker.allows() and w.record.role in (role, "both")
        ]
        return sorted(refs, key=lambda w: w.worker_id)

    async def dump_kv(self, worker_id: str) -> KVDump:
        """A KV index's resync: the worker's whole cache, straight from the worker."""
        ref = self.workers.get(worker_id)
        if ref is None:
            raise LookupError(f"{worker_id} is not in the registry")
        return await ref.client.dump_kv(timeout_s=10)

    @contextmanager
    def busy(self, ref: WorkerRef, prefill_tokens: int = 0) -> Iterator[Prefilling]:
        """A call in flight on `ref`, with `prefill_tokens` counted as queued on it until
        the call ends or its first token is in (`done()`)."""
        ref.in_flight += 1
        prefilling = Prefilling(ref, prefill_tokens)
        try:
            yield prefilling
        finally:
            ref.in_flight -= 1
            prefilling.done()

    async def close(self) -> None:
        for ref in self.workers.values():
            await ref.client.close(grace_s=None)
        self.workers.clear()
        for task in list(self._closing):
            task.cancel()


def _restarted(old: WorkerRecord, new: WorkerRecord) -> bool:
    return (
        old.started_at_unix_ms != new.started_at_unix_ms
        or old.grpc_address != new.grpc_address
        or old.stream_address != new.stream_address
    )
