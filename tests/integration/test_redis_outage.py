"""A Redis that stops answering, or dies: calls fail in seconds, requests go on, and
everything recovers by itself.

SIGSTOP freezes a real redis-server: its connections stay open and nothing comes back, as
with a host cut off by a firewall that drops packets. Without timeouts a call would wait
for as long as the freeze lasts; with them it fails, and the next one after the thaw works.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from services.cluster import redis_client
from services.cluster.launch import start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord
from tests.helpers.fault_cluster import TIMING, Cluster, ClusterFactory, body, stream_text

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


# ---- Redis killed (kill -9) under load, restarted empty on the same port ---------------------
OUTAGE_S = 20.0
SENDERS = 4  # closed-loop streams: two on each decode worker's batch, steady
PROMPTS = 8  # cycled: each one's fault-free text is known beforehand
AFTER_S = 8.0  # load goes on this long after the restart
# A prompt of many full blocks (16 tokens each), sent only after the restart: the KV index
# can know where it is cached only from KV events read after Redis came back.
FRESH_PROMPT = "After the storm the harbour was quiet again. " * 12


@dataclass(slots=True)
class _Load:
    texts: dict[int, str]
    done: list[tuple[float, float]] = field(default_factory=list)  # (start, end), monotonic
    failures: list[str] = field(default_factory=list)


async def _send_until(
    http: httpx.AsyncClient, load: _Load, first: int, stop: asyncio.Event
) -> None:
    """Closed loop: one stream after another until `stop` (bounded: 1000 requests)."""
    for n in range(1000):
        if stop.is_set():
            return
        i = (first + n * SENDERS) % PROMPTS
        t0 = time.monotonic()
        try:
            text = await stream_text(http, i)
        except Exception as e:  # a failed request is the finding: keep sending, report all
            load.failures.append(f"prompt {i} at +{t0:.1f}: {type(e).__name__}: {e}"[:400])
            continue
        if text != load.texts[i]:
            load.failures.append(f"prompt {i}: wrong text {text!r}")
        load.done.append((t0, time.monotonic()))


async def _through_outage(c: Cluster, load: _Load) -> tuple[float, float]:
    """Load before, during and after a Redis outage; returns when it began and ended."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=c.url, timeout=60) as http:
        senders = [asyncio.create_task(_send_until(http, load, k, stop)) for k in range(SENDERS)]
        try:
            await asyncio.sleep(3.0)
            port = c.redis.port
            os.kill(c.redis.pid, signal.SIGKILL)
            c.redis.stop()  # reaps it
            killed = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            # empty (no persistence); the same password, which the processes hold
            restart = functools.partial(RedisServer, port, password=c.redis.password)
            c.redis = await asyncio.to_thread(restart)
            back = time.monotonic()
            await asyncio.sleep(AFTER_S)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*senders), 60)
    return killed, back


def _cached_blocks_routed(c: Cluster, prompt: str, tries: int = 10) -> float:
    """Send `prompt` until the router routes it by a prefix-cache hit (KV index) on the
    decode pool; returns the cached blocks of that routing (0.0: never, in `tries`)."""
    for _ in range(tries):
        before = c.metric("tandem_routed_cached_blocks_total", pool="decode")
        r = httpx.post(f"{c.url}/v1/completions", json=body(0, False, prompt), timeout=60)
        assert r.status_code == 200, r.text
        hit = c.metric("tandem_routed_cached_blocks_total", pool="decode") - before
        if hit > 0:
            return hit
        time.sleep(0.3)  # the workers' KV events on their way to the router's index
    return 0.0


@pytest.mark.slow
def test_redis_killed_under_load_for_20_s_loses_no_request_and_all_recovers(
    cluster_factory: ClusterFactory,
) -> None:
    c = cluster_factory(router_args=("--routing=kv",), **{"decode-0": TIMING, "decode-1": TIMING})
    everyone = {"prefill-0", "decode-0", "decode-1"}

    async def fault_free() -> dict[int, str]:
        async with httpx.AsyncClient(base_url=c.url, timeout=60) as http:
            texts = await asyncio.gather(*(stream_text(http, i) for i in range(PROMPTS)))
        return dict(enumerate(texts))

    load = _Load(asyncio.run(fault_free()))
    killed, back = asyncio.run(_through_outage(c, load))
    assert not load.failures, (load.failures[:10], c.router.tail(60))
    during = [d for d in load.done if d[0] > killed and d[1] < back]
    assert len(during) >= 20, len(during)  # the load really went on meanwhile
    assert len([d for d in load.done if d[0] > back]) >= 8
    # Routing never let go of a worker: an empty restarted Redis is not their departure ...
    departures = [f"worker {w} left" for w in everyone]
    assert not [ln for ln in c.router.lines if any(d in ln for d in departures)], c.router.tail()
    # ... the registry is whole again (workers re-register by themselves) ...
    deadline = time.monotonic() + 10
    while c.registered() != everyone:
        assert time.monotonic() < deadline, (c.registered(), c.router.tail())
        time.sleep(0.2)
    # ... and the router's KV index is fed again: a prompt first seen after the restart is
    # routed to where its blocks are cached.
    assert _cached_blocks_routed(c, FRESH_PROMPT) >= 4, c.router.tail(60)
    assert c.router.proc.poll() is None and all(p.proc.poll() is None for p in c.workers.values())
