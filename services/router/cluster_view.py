"""The router's picture of the cluster, kept fresh in the background:

    every refresh_s:  registry -> WorkerSet (who is up, their load)
                      -> KVFeed.sync (whose KV events to follow)
                      -> metrics gauges (queue depth, KV blocks, KV index size)
    every health_s:   each worker's grpc.health.v1 check -> routable or not
                      (health_checks.py)
    all the time:     KVFeed.run (KV events -> the KV index)

A registry that cannot be read (Redis down) leaves the picture as it was: requests go on
to the workers last seen, whose health the router checks itself over gRPC. When it can be
read again, a worker missing from it is kept for one registry TTL: a Redis that restarted
is empty (no persistence) until each worker's next heartbeat, and routing to nobody in
that second would fail every request. A worker that really died meanwhile is out of
routing anyway (its health checks fail); it leaves the set when the TTL is over.

Per-request decisions are services/router/dispatch.py's; this only keeps what they read true.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from engine.config import ROLES
from services.cluster.registry import DEFAULT_TTL_S
from services.kv.feed import KVFeed
from services.pb.events_pb2 import WorkerRecord
from services.router.health_checks import HealthChecks
from services.router.metrics import RouterMetrics
from services.router.workers import WorkerRef, WorkerSet

log = logging.getLogger(__name__)
REJOIN_S = DEFAULT_TTL_S  # after an outage, how long an absent worker is not "gone"


class ClusterView:
    def __init__(
        self,
        workers: WorkerSet,
        metrics: RouterMetrics,
        feed: KVFeed | None = None,
        refresh_s: float = 0.5,
        on_departed: Callable[[str], None] = lambda worker_id: None,
        health_s: float | None = None,
    ) -> None:
        """`feed` keeps a KV index true (kv routing only); `on_departed` hears of each
        worker that left the registry (routing state about it can go); `health_s` None
        checks no worker's health (tests that drive the workers by hand)."""
        self.workers = workers
        self.metrics = metrics
        self.feed = feed
        self.refresh_s = refresh_s
        self.on_departed = on_departed
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._exported: set[str] = set()  # workers with load series in the metrics
        self._unreadable_since: float | None = None  # the registry's reads fail (monotonic)
        self._rejoin_until = 0.0  # absent workers are kept until then (monotonic)
        self.health = HealthChecks(workers, metrics, health_s) if health_s else None

    async def start(self) -> None:
        """Read the registry once (so the first request sees the workers), then keep on."""
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._refresh_forever()))
        if self.health is not None:
            self._tasks.append(asyncio.create_task(self.health.run(self._stop)))
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(self._stop)))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.workers.close()

    # ---- what requests read ------------------------------------------------------------
    def serving(self, role: str) -> list[WorkerRef]:
        return self.workers.serving(role)

    def prefill_for(self, decode: WorkerRef) -> list[WorkerRef]:
        """The serving prefill workers whose KV `decode` can read: those whose head groups
        are its own (of any tensor-parallel size: WorkerRef.kv_layout)."""
        return [w for w in self.serving("prefill") if w.kv_layout == decode.kv_layout]

    def has_pool(self, role: str) -> bool:
        """Any worker of exactly `role` in the registry, routable or not: an empty pool
        (scaled to zero) is not a pool whose workers all fail."""
        return any(w.record.role == role for w in self.workers.workers.values())

    def get(self, worker_id: str) -> WorkerRef | None:
        return self.workers.workers.get(worker_id)

    def records(self) -> list[WorkerRecord]:
        return [w.record for w in self.workers.workers.values()]

    # ---- keeping it fresh --------------------------------------------------------------
    async def refresh(self) -> None:
        now = time.monotonic()
        keep_absent = self._unreadable_since is not None or now < self._rejoin_until
        try:
            await self.workers.refresh(keep_absent)
        except Exception:
            if self._unreadable_since is None:
                self._unreadable_since = now
            raise
        if self._unreadable_since is not None:
            log.info(
                "the registry can be read again after %.1f s; workers it lacks are kept "
                "for %.0f s more",
                now - self._unreadable_since,
                REJOIN_S,
            )
            self._unreadable_since, self._rejoin_until = None, now + REJOIN_S
        if self.feed is not None:
            await self.feed.sync(self.workers.workers)
        self._export_load()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            failing = self._unreadable_since is not None
            try:
                await self.refresh()
            except Exception:
                if not failing:  # the first failure in a row has the traceback, not each
                    log.exception("reading the registry failed; serving the workers last seen")

    def _export_load(self) -> None:
        m, live = self.metrics, self.workers.workers
        for role in ROLES:
            m.set_queue_depth(
                role, sum(w.record.waiting for w in live.values() if w.record.role == role)
            )
        for ref in live.values():
            m.set_kv_blocks(ref.worker_id, ref.record.used_blocks, ref.record.num_blocks)
        if self.feed is not None:
            m.set_kv_index(self.feed.index.num_entries, self.feed.resyncs, self.feed.expired)
        for gone in self._exported - live.keys():  # series of departed workers go too
            m.forget_worker(gone)
            self.on_departed(gone)
        self._exported = set(live)
