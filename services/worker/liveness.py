"""Is this worker fit to be routed to? Asked every heartbeat, answered in three places.

    engine loop alive, went round within stall_s   ->  SERVING      the heartbeat renews
                                                                    the registry record
    loop died, or stuck in one step past stall_s,  ->  NOT_SERVING  the record is removed
    or a tensor-parallel rank of it exited                          at once, not renewed

A worker that is not fit leaves the registry rather than renewing a record with its last
figures (a frozen load can even make it look cheap). The same answer goes to the standard
grpc.health.v1 service, which the router's health checks and Kubernetes' gRPC probes read,
and to the worker's own Health rpc. A stall that ends (a long step finishing) brings the
worker back on the next heartbeat.

`stall_s` must exceed the longest step the engine may take: a whole prefill chunk of a big
model on a slow CPU takes tens of seconds; the idle loop goes round every 0.1 s.
"""

from __future__ import annotations

import time

from grpc_health.v1 import health, health_pb2

from services.pb import worker_pb2
from services.worker.engine_thread import EngineLoop

DEFAULT_STALL_S = 60.0
# "" is the whole server (grpc.health.v1's convention), then the Worker service by name.
SERVICES = ("", worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Liveness:
    def __init__(self, loop: EngineLoop, stall_s: float = DEFAULT_STALL_S) -> None:
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        self.loop = loop
        self.stall_s = stall_s
        self.servicer = health.aio.HealthServicer()

    def problem(self) -> str | None:
        """Why this worker must not be routed to, or None when it is fit."""
        if not self.loop.alive:
            return f"its engine loop died ({self.loop.error!r})"
        tp = self.loop.engine.tp
        if tp is not None and (lost := tp.lost()) is not None:
            return f"its engine cannot step: {lost}"  # the next step would fail
        stalled = time.monotonic() - self.loop.last_iteration
        if stalled > self.stall_s:
            return f"its engine has been in one step for {stalled:.1f} s (limit {self.stall_s:g} s)"
        return None

    async def update(self) -> str | None:
        """The problem, if any, after telling the health service."""
        problem = self.problem()
        for service in SERVICES:
            await self.servicer.set(service, _SERVING if problem is None else _NOT_SERVING)
        return problem

    async def shutting_down(self) -> None:
        """NOT_SERVING from now on, whatever the engine does: the worker is leaving."""
        await self.servicer.enter_graceful_shutdown()
