"""Liveness end to end over the standard grpc.health.v1 protocol on 127.0.0.1: a worker's
Liveness says SERVING while its engine loop goes round and NOT_SERVING once it died or
sits in one step too long; the router's HealthChecks take a worker out of routing after
failed checks (NOT_SERVING, or nobody answering) and put it back when it passes again."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
from grpc_health.v1 import health_pb2_grpc

from services.pb.events_pb2 import WorkerRecord
from services.router.health_checks import HealthChecks
from services.router.metrics import RouterMetrics
from services.router.worker_client import WorkerClient
from services.router.workers import FAILURES_TO_EXCLUDE, WorkerRef, WorkerSet
from services.worker.engine_thread import EngineLoop
from services.worker.liveness import Liveness
from tests.unit.test_engine_loop import ScriptedEngine


class Broken(ScriptedEngine):
    def step(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bad step")


class Gated(ScriptedEngine):
    """A step waits while the gate is shut: a wedged engine, for as long as a test likes."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = threading.Event()
        self.gate.set()

    def step(self):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        return []


async def _serve(liveness: Liveness) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(liveness.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _ref(worker_id: str, address: str) -> WorkerRef:
    return WorkerRef(WorkerRecord(worker_id=worker_id, role="decode"), WorkerClient(address))


def test_a_stalled_or_dead_engine_is_out_of_routing_and_a_recovered_one_back() -> None:
    async def run() -> None:
        engine = Gated()
        loop = EngineLoop(lambda: engine, idle_s=0.005)  # type: ignore[arg-type]
        loop.start()
        liveness = Liveness(loop, stall_s=0.3)
        server, address = await _serve(liveness)
        workers = WorkerSet(registry=None)  # type: ignore[arg-type]  # never refreshed
        ref = workers.workers["decode-0"] = _ref("decode-0", address)
        metrics = RouterMetrics("test-model")
        checks = HealthChecks(workers, metrics, every_s=1.0)
        try:
            assert await liveness.update() is None
            await checks.check_all()
            assert ref.routable and workers.serving("decode") == [ref]

            engine.gate.clear()  # the next step hangs
            await asyncio.sleep(0.6)
            assert "in one step for" in (await liveness.update() or "")
            for _ in range(FAILURES_TO_EXCLUDE):
                assert ref.routable
                await checks.check_all()
            assert not ref.routable and workers.serving("decode") == []
            assert metrics.workers_unroutable._value.get() == 1

            engine.gate.set()  # the step ends, the loop goes round again
            await asyncio.sleep(0.1)
            assert await liveness.update() is None
            await checks.check_all()
            assert ref.routable and metrics.workers_unroutable._value.get() == 0
            failures = metrics.health_check_failures.labels(worker="decode-0")._value.get()
            assert failures == FAILURES_TO_EXCLUDE
        finally:
            engine.gate.set()
            loop.stop()
            await server.stop(None)
            await ref.client.close()

    asyncio.run(run())


def test_a_died_engine_loop_is_not_serving() -> None:
    async def run() -> None:
        loop = EngineLoop(lambda: Broken([]), idle_s=0.005)  # type: ignore[arg-type]
        loop.start()
        deadline = time.monotonic() + 5
        while loop.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        liveness = Liveness(loop)
        assert "engine loop died" in (await liveness.update() or "")
        server, address = await _serve(liveness)
        client = WorkerClient(address)
        try:
            assert not await client.serving(timeout_s=2)
        finally:
            await server.stop(None)
            await client.close()

    asyncio.run(run())


def test_a_worker_nobody_answers_for_is_out_of_routing() -> None:
    async def run() -> None:
        workers = WorkerSet(registry=None)  # type: ignore[arg-type]
        # A port nothing listens on: every check fails at once.
        ref = workers.workers["decode-9"] = _ref("decode-9", "127.0.0.1:1")
        checks = HealthChecks(workers, RouterMetrics("test-model"), every_s=0.5)
        try:
            for _ in range(FAILURES_TO_EXCLUDE):
                await checks.check_all()
            assert not ref.routable
        finally:
            await ref.client.close()

    asyncio.run(run())
