"""The worker registry against a real Redis server."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from services.cluster.arrivals import ArrivalCount, Arrivals
from services.cluster.held_requests import HeldRequests
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord


@pytest.fixture
def registry(redis_url: str) -> Registry:
    return Registry(redis.Redis.from_url(redis_url), prefix=f"test-{uuid.uuid4().hex[:8]}")


def record(worker_id: str, role: str = "prefill", started: int = 1) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        role=role,
        grpc_address="127.0.0.1:50051",
        nixl_agent=worker_id,
        nixl_metadata=b"\x00meta",
        kv_block_bytes=2048,
        started_at_unix_ms=started,
    )


def test_heartbeat_publishes_the_record(registry: Registry) -> None:
    before = int(time.time() * 1000)
    registry.heartbeat(record("prefill-0"))
    got = registry.get("prefill-0")
    assert got is not None
    assert (got.role, got.nixl_metadata, got.kv_block_bytes) == ("prefill", b"\x00meta", 2048)
    assert got.heartbeat_unix_ms >= before


def test_workers_by_role(registry: Registry) -> None:
    for wid, role in [
        ("prefill-1", "prefill"),
        ("decode-0", "decode"),
        ("prefill-0", "prefill"),
        ("x-0", "both"),
    ]:
        registry.heartbeat(record(wid, role))
    assert [w.worker_id for w in registry.workers()] == [
        "decode-0",
        "prefill-0",
        "prefill-1",
        "x-0",
    ]
    assert [w.worker_id for w in registry.workers("prefill")] == ["prefill-0", "prefill-1", "x-0"]
    assert [w.worker_id for w in registry.workers("decode")] == ["decode-0", "x-0"]


def test_a_silent_worker_expires(registry: Registry) -> None:
    registry.heartbeat(record("decode-9", "decode"), ttl_s=0.3)
    assert registry.get("decode-9") is not None
    deadline = time.monotonic() + 5
    while registry.get("decode-9") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.get("decode-9") is None
    assert registry.workers() == []


def test_heartbeats_keep_a_worker_alive(registry: Registry) -> None:
    for _ in range(4):  # 4 x 0.15 s spans well past the 0.3 s TTL
        registry.heartbeat(record("prefill-5"), ttl_s=0.3)
        time.sleep(0.15)
    assert registry.get("prefill-5") is not None


def test_remove_and_restart(registry: Registry) -> None:
    registry.heartbeat(record("prefill-2", started=100))
    registry.heartbeat(record("prefill-2", started=200))  # the same id, a new process
    got = registry.get("prefill-2")
    assert got is not None and got.started_at_unix_ms == 200
    assert registry.remove("prefill-2")
    assert registry.get("prefill-2") is None
    assert not registry.remove("prefill-2")


def test_held_requests_add_up_over_routers_and_lapse_with_a_dead_one(redis_url: str) -> None:
    held = HeldRequests(redis.Redis.from_url(redis_url), prefix=f"test-{uuid.uuid4().hex[:8]}")
    assert held.total() == 0
    held.publish("router-a", 3)
    held.publish("router-b", 2, ttl_s=0.3)  # then dies: no renewal
    assert held.total() == 5
    held.publish("router-a", 0)  # served: gone at once
    assert held.total() == 2
    deadline = time.monotonic() + 5
    while held.total() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.total() == 0


def test_arrival_counts_go_through_redis_and_lapse_with_a_dead_router(redis_url: str) -> None:
    arrivals = Arrivals(redis.Redis.from_url(redis_url), prefix=f"test-{uuid.uuid4().hex[:8]}")
    assert arrivals.read() == []
    a = ArrivalCount("router-a", 12, 3_072, 1_000, 5_000, 768, local_prompt_tokens=192)
    b = ArrivalCount("router-b", 4, 256, 2_000, 5_100)  # a router that does not count asks
    c = ArrivalCount("router-c", 2, 64, 3_000, 5_200, 40)  # nor short prompts
    arrivals.publish(a)
    arrivals.publish(b, ttl_s=0.3)  # then dies: no renewal
    arrivals.publish(c, ttl_s=0.3)
    assert sorted(arrivals.read(), key=lambda c: c.router_id) == [a, b, c]
    later = ArrivalCount("router-a", 15, 3_840, 1_000, 6_000, max_output_tokens=960)
    arrivals.publish(later)  # a publish replaces the count it had
    deadline = time.monotonic() + 5
    while len(arrivals.read()) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert arrivals.read() == [later]


def test_record_needs_an_id(registry: Registry) -> None:
    with pytest.raises(ValueError):
        registry.heartbeat(WorkerRecord(role="decode"))


def test_private_server_starts_and_stops_by_pid() -> None:
    with RedisServer() as a, RedisServer() as b:
        assert a.port != b.port
        assert redis.Redis.from_url(a.url).ping()
        pid = a.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
