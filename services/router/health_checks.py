"""The router's own check of every worker, beside the registry's heartbeats.

A record in the registry says a worker's process can reach Redis; only the worker can say
that it can serve. Every `every_s`, each worker is asked at once (grpc.health.v1 Check on
the channel the router already holds, with a deadline of `every_s`):

    SERVING                                  -> routable (again: a stall that ended)
    NOT_SERVING, an error, no answer in time -> FAILURES_TO_EXCLUDE (workers.py) in a row:
                                                out of routing

A killed worker's channel fails at once and a frozen one times out, so either is out of
routing within about two checks (2 s by default), where its record would take the registry
TTL (5 s) and the next refresh to go. A worker whose engine died is out on the next check:
it answers NOT_SERVING, and also leaves the registry itself (services/worker/liveness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.router.metrics import RouterMetrics
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef, WorkerSet

log = logging.getLogger(__name__)


class HealthChecks:
    def __init__(self, workers: WorkerSet, metrics: RouterMetrics, every_s: float = 1.0) -> None:
        self.workers = workers
        self.metrics = metrics
        self.every_s = every_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_all()
            except Exception:  # a bug here must not end health checking for good
                log.exception("checking the workers' health failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def check_all(self) -> None:
        refs = list(self.workers.workers.values())
        await asyncio.gather(*(self._check(ref) for ref in refs))
        self.metrics.set_unroutable(sum(not ref.routable for ref in refs))

    async def _check(self, ref: WorkerRef) -> None:
        try:
            serving = await ref.client.serving(timeout_s=self.every_s)
            why = "" if serving else "it answers NOT_SERVING"
        except WorkerError as e:
            why = f"its health check failed ({e.code})"
        was_routable = ref.routable
        if not why:
            ref.failed_checks = 0
            if not was_routable:
                log.info("worker %s passes its health check again: routable", ref.worker_id)
            return
        self.metrics.record_health_check_failure(ref.worker_id)
        ref.failed_checks += 1
        if was_routable and not ref.routable:
            log.warning("worker %s is out of routing: %s", ref.worker_id, why)
