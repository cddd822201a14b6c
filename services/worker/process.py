"""Run one worker: engine + NIXL + gRPC server + registry heartbeat (+ peer watcher).

Used by the Ray actors (services/cluster/pools.py), by `tandem worker` (standalone.py: one
worker per process, as a Kubernetes pod runs it) and by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
import redis
import uvloop
from grpc_health.v1 import health_pb2_grpc

from engine import Engine
from services import wire
from services.cluster import redis_client
from services.cluster.cluster_token import TokenInterceptor
from services.cluster.gc_settle import settle
from services.cluster.registry import Registry
from services.cluster.worker_tls import ServerTls
from services.pb import worker_pb2_grpc
from services.pb.events_pb2 import WorkerRecord
from services.served_name import served_model_name
from services.worker.core import Worker, WorkerConfig
from services.worker.handlers import WorkerCalls
from services.worker.kv_publisher import KVPublisher
from services.worker.liveness import DEFAULT_STALL_S, Liveness
from services.worker.metrics import serve_metrics
from services.worker.peers import PeerWatcher
from services.worker.servicer import WorkerService
from services.worker.token_stream import TokenStreamServer

log = logging.getLogger(__name__)
LEAVE_GRACE_S = 1.0  # routers read the registry every 0.5 s (DispatchConfig.refresh_s)
QUIESCE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class WorkerNetConfig:
    """Where a worker listens and registers: its network side, not its engine."""

    redis_url: str = field(repr=False)  # may carry a password (redis_url.py)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    advertise_host: str | None = None  # what peers dial; default: host
    heartbeat_s: float = 1.0
    registry_ttl_s: float = 5.0  # a worker silent this long drops out of routing
    registry_prefix: str = "tandem"
    stall_s: float = DEFAULT_STALL_S  # an engine in one step this long leaves the registry
    # On stop: out of the registry at once, then streams in flight get this long to finish
    # (a stream cut after it resumes on another decode worker). Short under `tandem serve`,
    # whose Ctrl-C stops the whole cluster; `tandem worker` (a pod) waits longer.
    drain_s: float = 2.0
    # None: any caller may call (cluster_token.py); also signs our registry record
    cluster_token: str | None = field(default=None, repr=False)
    tls: ServerTls | None = field(default=None, repr=False)  # None: plain gRPC (worker_tls.py)
    metrics_port: int | None = None  # its own /metrics (metrics.py); 0: a free port; None: none
    # Its token stream (token_stream.py), where routers send Decode calls; 0: a free port;
    # None: none (routers then decode over gRPC)
    stream_port: int | None = 0


class WorkerServer:
    """Owns a worker and everything around it, on one asyncio loop."""

    def __init__(self, config: WorkerConfig, net: WorkerNetConfig) -> None:
        self.config = config
        self.net = net
        self.worker: Worker | None = None
        self.address = ""
        self.metrics_address = ""  # host:port of its own /metrics, once started (if any)
        self.stream_address = ""  # host:port of its token stream, once started (if any)
        self._metrics_server: WSGIServer | None = None
        self.stopping = asyncio.Event()
        client = redis_client.connect(net.redis_url)
        self._registry = Registry(client, net.registry_prefix, token=net.cluster_token)
        started_at_ms = int(time.time() * 1000)
        self.publisher = KVPublisher(client, config.worker_id, started_at_ms, net.registry_prefix)
        self._started_at_ms = started_at_ms

    async def start(self) -> str:
        worker = await asyncio.to_thread(  # loads the model (seconds)
            Worker, self.config, self.publisher.on_event, self._started_at_ms
        )
        self.worker = worker
        worker.start()
        self.liveness = Liveness(worker.loop, self.net.stall_s)
        self._listed = False  # whether our record is in the registry (as far as we know)
        # Its KV state is in Redis before the worker is in the registry.
        await self.publisher.flush(self._kv_snapshot)
        peers = None
        if worker.role != "prefill":
            peers = PeerWatcher(self._registry, worker.loop, worker.transfer, worker.worker_id)
        token = self.net.cluster_token
        self._server = grpc.aio.server(interceptors=[TokenInterceptor(token)] if token else None)
        calls = WorkerCalls(worker, peers, self.liveness, self.stopping.is_set)
        worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(calls), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.liveness.servicer, self._server)
        listen = f"{self.net.host}:{self.net.port}"
        tls = self.net.tls
        if tls is None:
            port = self._server.add_insecure_port(listen)
        else:
            port = self._server.add_secure_port(listen, tls.credentials())
        await self._server.start()
        self.address = f"{self.net.advertise_host or self.net.host}:{port}"
        self.stream_address = await self._serve_stream(calls)
        self.metrics_address = self._serve_metrics(worker)
        self._record = self._base_record(worker)
        settle()
        await self._beat()  # registered before we say we are up
        self._tasks = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self.publisher.run(self._kv_snapshot, self.stopping)),
        ]
        if peers is not None:
            await peers.refresh()
            self._tasks.append(asyncio.create_task(peers.run(0.5, self.stopping)))
        log.info("%s (%s) serving on %s", worker.worker_id, worker.role, self.address)
        return self.address

    async def _serve_stream(self, calls: WorkerCalls) -> str:
        """host:port of our token stream, or "" when the config asks for none."""
        if self.net.stream_port is None:
            return ""
        self._stream = TokenStreamServer(calls, self.net.cluster_token, self.net.tls)
        port = await self._stream.start(self.net.host, self.net.stream_port)
        return f"{self.net.advertise_host or self.net.host}:{port}"

    def _serve_metrics(self, w: Worker) -> str:
        """host:port of our /metrics, or "" when the config asks for none."""
        if self.net.metrics_port is None:
            return ""
        name = self.config.served_name or served_model_name(self.config.engine.model)
        self._metrics_server, port = serve_metrics(
            lambda: w.last_stats, (name, w.worker_id, w.role), self.net.host, self.net.metrics_port
        )
        return f"{self.net.advertise_host or self.net.host}:{port}"

    async def _kv_snapshot(self) -> tuple[int, list[int]]:
        assert self.worker is not None
        take = self.publisher.take_snapshot

        def snapshot(engine: Engine) -> tuple[int, list[int]]:
            snap = engine.kv_snapshot()
            return take(snap.seq, snap.block_hashes)

        return await self.worker.loop.call(snapshot)

    def _base_record(self, w: Worker) -> WorkerRecord:
        return wire.worker_record(
            worker_id=w.worker_id,
            role=w.role,
            grpc_address=self.address,
            stream_address=self.stream_address,
            metrics_address=self.metrics_address,
            model=self.config.engine.model,
            block_size=w.engine.block_size,
            num_blocks=w.engine.num_blocks,
            max_model_len=w.engine.max_model_len,
            max_num_seqs=self.config.engine.scheduler.max_num_seqs,
            peer=w.transfer.describe(),
            started_at_unix_ms=w.started_at_ms,
        )

    async def _beat(self) -> None:
        """Renew our record while the worker is fit; leave the registry when it is not."""
        assert self.worker is not None
        problem = await self.liveness.update()
        if problem is None:
            wire.set_load(self._record, self.worker.last_stats)  # never waits for the engine
            ttl_s = self.net.registry_ttl_s
            await asyncio.to_thread(self._registry.heartbeat, self._record, ttl_s)
            if not self._listed:
                log.info("%s is in the registry", self.worker.worker_id)
            self._listed = True
            return
        if self._listed:
            log.error("%s leaves the registry: %s", self.worker.worker_id, problem)
            await asyncio.to_thread(self._registry.remove, self.worker.worker_id)
            self._listed = False

    async def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.net.heartbeat_s)
            if self.stopping.is_set():
                break
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")

    async def stop(self, drain_s: float | None = None) -> None:
        """Leave the registry (routers stop sending), finish what this worker holds within
        `drain_s` (default `net.drain_s`): its requests, and the prompts' blocks held for
        decode workers still to read them; then stop."""
        deadline = time.monotonic() + (self.net.drain_s if drain_s is None else drain_s)
        self.stopping.set()
        if hasattr(self, "liveness"):
            await self.liveness.shutting_down()
        if self.worker is not None:
            await asyncio.to_thread(self._registry.remove, self.worker.worker_id)
        await asyncio.gather(*getattr(self, "_tasks", []), return_exceptions=True)
        if self.worker is not None:
            with contextlib.suppress(redis.RedisError):
                await asyncio.to_thread(self.publisher.remove)
            # A router sees us gone at its next registry read: what it sent until then is
            # still taken (and finished below), not refused by a server already closed.
            await asyncio.sleep(max(0.0, min(LEAVE_GRACE_S, deadline - time.monotonic())))
            await self._quiesce(deadline)
        grace_s = max(deadline - time.monotonic(), 0.0)  # what is left of the drain
        if hasattr(self, "_stream"):  # calls still open get it, on both edges
            await self._stream.stop(grace_s)
        if hasattr(self, "_server"):
            await self._server.stop(grace_s)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.worker is not None:
            self.worker.close()

    async def _quiesce(self, deadline: float) -> None:
        """Until nothing runs, waits or is held for a reader, or the deadline."""
        assert self.worker is not None
        while time.monotonic() < deadline and self.worker.loop.alive:
            s = await self.worker.stats()
            if s.running == 0 and s.waiting == 0 and s.leases == 0:
                return
            await asyncio.sleep(QUIESCE_POLL_S)


class WorkerThread:
    """A WorkerServer on an event loop of its own thread, for callers that are not async
    (a Ray actor, a test). `start()` blocks until the worker is registered."""

    def __init__(self, config: WorkerConfig, net: WorkerNetConfig) -> None:
        self.server = WorkerServer(config, net)
        self.event_loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.event_loop.run_forever, daemon=True)

    def start(self, timeout_s: float = 300.0) -> str:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self.event_loop)
        return fut.result(timeout_s)

    def run(self, coro: object, timeout_s: float = 60.0) -> object:
        """Run a coroutine of the worker's on its event loop (stats, integrity checks)."""
        return asyncio.run_coroutine_threadsafe(coro, self.event_loop).result(timeout_s)  # type: ignore[arg-type]

    def stop(self, drain_s: float | None = None) -> None:
        if not self.event_loop.is_running():  # stopped already: nothing would run the stop
            return
        try:
            self.run(self.server.stop(drain_s), timeout_s=60.0 + (drain_s or 0.0))
        finally:
            self.event_loop.call_soon_threadsafe(self.event_loop.stop)
            self._thread.join(10)
