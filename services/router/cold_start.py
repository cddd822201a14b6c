"""Requests that arrive while the pool that serves them has no worker (the whole cluster
scaled to zero): held until a first worker starts, bounded in number and in time.

    request ── its pool has routable workers? ── yes ──> on, as ever (nothing here runs)
                           │ no
                           ├─ holding is off (wait_s 0) ────────> 503 at once
                           ├─ max_held requests already held ───> 503 at once, Retry-After
                           └─ held, and counted in Redis (services/cluster/held_requests.py:
                              the autoscaler starts a first worker for them) until
                              ├─ a worker is routable ──────────> on, as ever
                              └─ wait_s is over ────────────────> 503, Retry-After

As Knative's activator holds requests for a revision at zero. The count in Redis is
renewed while any request is held, so a router that dies holding some stops asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from services.router.backend import BackendError
from services.router.metrics import RouterMetrics
from services.router.workers import WorkerRef

POLL_S = 0.1  # the router's view of the registry is refreshed every 0.5 s
RENEW_S = 3.0  # the Redis count lives services.cluster.held_requests.DEFAULT_TTL_S
RETRY_AFTER_S = 5  # a first worker takes seconds to start: sooner would only be refused
log = logging.getLogger(__name__)


class ColdStart:
    def __init__(
        self,
        wait_s: float,
        max_held: int,
        metrics: RouterMetrics,
        publish: Callable[[str, int], None] = lambda router_id, count: None,
    ) -> None:
        """`wait_s` 0 holds nothing; `publish(router_id, count)` tells the autoscaler how
        many requests this router holds (a blocking call: run off the event loop)."""
        self.wait_s, self.max_held = wait_s, max_held
        self.metrics = metrics
        self._publish = publish
        self._router_id = uuid.uuid4().hex[:12]
        self.held = 0
        self._published_at = -RENEW_S
        self._telling: set[asyncio.Task[None]] = set()  # kept: the loop holds tasks weakly

    async def workers(
        self, pool: str, serving: Callable[[], Sequence[WorkerRef]]
    ) -> Sequence[WorkerRef]:
        """`serving()`, the routable workers of `pool`, at once when there are some or
        holding is off (admission answers 503 to none, as without this); else once some
        come, or 503 when it cannot hold or none came in time."""
        if (workers := serving()) or self.wait_s <= 0:
            return workers
        if self.held >= self.max_held:
            raise BackendError(
                503,
                f"{self.held} requests already wait for a {pool} worker to start; retry later.",
                "service_unavailable",
                RETRY_AFTER_S,
            )
        self._count(+1)
        try:
            return await self._until_serving(pool, serving)
        finally:
            self._count(-1)

    async def _until_serving(
        self, pool: str, serving: Callable[[], Sequence[WorkerRef]]
    ) -> Sequence[WorkerRef]:
        deadline = time.monotonic() + self.wait_s
        await self._tell()
        while not (workers := serving()):
            if time.monotonic() >= deadline:
                self.metrics.held_timeouts.inc()
                raise BackendError(
                    503,
                    f"no {pool} worker started within {self.wait_s:g} s; retry later.",
                    "service_unavailable",
                    RETRY_AFTER_S,
                )
            await asyncio.sleep(POLL_S)
            if time.monotonic() - self._published_at >= RENEW_S:
                await self._tell()
        return workers

    def _count(self, change: int) -> None:
        self.held += change
        self.metrics.requests_held.set(self.held)
        if self.held == 0:  # the last one out takes the count down at once
            task = asyncio.get_running_loop().create_task(self._tell())
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    async def _tell(self) -> None:
        self._published_at = time.monotonic()
        try:
            await asyncio.to_thread(self._publish, self._router_id, self.held)
        except Exception as e:  # Redis away: holding goes on; a worker may come anyway
            log.warning("cannot publish the %d requests held (%s)", self.held, e)
