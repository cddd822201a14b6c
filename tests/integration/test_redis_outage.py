"""A Redis that stops answering: calls fail in seconds, and everything recovers by itself.

SIGSTOP freezes a real redis-server: its connections stay open and nothing comes back, as
with a host cut off by a firewall that drops packets. Without timeouts a call would wait
for as long as the freeze lasts; with them it fails, and the next one after the thaw works.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.cluster import redis_client
from services.cluster.launch import start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord

# The most one call may take against a frozen Redis: a new connection, its reply, and
# slack for a busy 2-core machine.
CALL_BOUND_S = redis_client.CONNECT_TIMEOUT_S + redis_client.SOCKET_TIMEOUT_S + 1.5


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own: freezing the session's would stall the other tests."""
    with RedisServer() as s:
        try:
            yield s
        finally:
            os.kill(s.pid, signal.SIGCONT)  # a failed test must not leave it frozen


def _frozen_call_fails_in_time(call) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        call()
    assert time.monotonic() - t0 < CALL_BOUND_S


def test_a_registry_call_to_a_frozen_redis_fails_in_seconds_then_recovers(
    server: RedisServer,
) -> None:
    registry = Registry(redis_client.connect(server.url), prefix=f"t-{uuid.uuid4().hex[:8]}")
    registry.heartbeat(WorkerRecord(worker_id="w-0", role="decode"))
    os.kill(server.pid, signal.SIGSTOP)
    _frozen_call_fails_in_time(registry.workers)
    os.kill(server.pid, signal.SIGCONT)
    assert [r.worker_id for r in registry.workers()] == ["w-0"]  # the same client, unaided


def test_the_async_client_fails_in_seconds_too(server: RedisServer) -> None:
    """The router's KV feed reads streams with the async client."""

    async def main() -> None:
        r = redis_client.connect_async(server.url)
        try:
            await r.xadd("s", {"k": "v"})
            os.kill(server.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
                await r.xread({"s": "0"}, block=100)
            assert time.monotonic() - t0 < CALL_BOUND_S
            os.kill(server.pid, signal.SIGCONT)
            assert len((await r.xread({"s": "0"}, block=100))[0][1]) == 1
        finally:
            await r.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_a_worker_keeps_running_through_a_frozen_redis_and_heartbeats_after(
    server: RedisServer, smollm_path: Path, tmp_path: Path
) -> None:
    proc, _ = start_worker(tmp_path, "mock-0", "both", server.url, smollm_path, "--engine=mock")
    try:
        registry = Registry(redis_client.connect(server.url))
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(CALL_BOUND_S + 1.0)  # heartbeats (every 1 s) time out meanwhile
        os.kill(server.pid, signal.SIGCONT)
        thawed_ms = int(time.time() * 1000)
        assert "heartbeat failed" in proc.tail(200)
        deadline = time.monotonic() + 5.0
        record = None
        while time.monotonic() < deadline:
            record = registry.get("mock-0")
            if record is not None and record.heartbeat_unix_ms > thawed_ms:
                break
            time.sleep(0.1)
        assert record is not None and record.heartbeat_unix_ms > thawed_ms, proc.tail()
        assert proc.proc.poll() is None
    finally:
        proc.stop(signal.SIGTERM)
