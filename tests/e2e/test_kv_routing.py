"""KV-aware routing on a live cluster of mock workers (services through HTTP, gRPC, Redis,
NIXL and Ray, as in production; only the forward pass is a timing model)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from services.cluster import launch
from services.cluster.cluster_token import TOKEN_ENV
from services.cluster.registry import Registry
from services.kv.stream import KVKeys, parse_state
from services.pb import worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import CLUSTER_TOKEN, MODEL, TOKEN_METADATA, Served

BLOCK = 16
PREFIX_BLOCKS = 30


def _prefix(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 40000) for _ in range(PREFIX_BLOCKS * BLOCK)]


def _complete(client: httpx.Client, prompt: list[int], **extra: str) -> int:
    """Send token ids; returns the prompt tokens the chosen prefill worker had cached."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 3, "ignore_eos": True, **extra}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def _routed(served: Served) -> dict[str, float]:
    registry = Registry(redis.Redis.from_url(served.redis_url), token=CLUSTER_TOKEN)
    records = registry.workers("prefill")
    return {
        r.worker_id: served.metric(
            "tandem_routed_requests_total", pool="prefill", worker=r.worker_id
        )
        for r in records
    }


def test_a_shared_prefix_goes_to_the_worker_that_holds_it(mock_cluster: Served) -> None:
    prefix = _prefix(1)
    before = _routed(mock_cluster)
    with mock_cluster.client() as c:
        assert _complete(c, prefix + [7] * 20) == 0
        cached = [_complete(c, prefix + [8 + i] * 20) for i in range(5)]
    assert cached == [len(prefix)] * 5
    gained = {w: n - before.get(w, 0) for w, n in _routed(mock_cluster).items()}
    assert sorted(gained.values()) == [0, 0, 0, 6]  # one worker took all six


def test_a_cache_salt_shares_cached_blocks_only_with_its_own(mock_cluster: Served) -> None:
    prompt = _prefix(2) + [7] * 20
    with mock_cluster.client() as c:
        assert _complete(c, prompt, cache_salt="tenant-a") == 0
        assert _complete(c, prompt) == 0  # unsalted: another chain
        assert _complete(c, prompt, cache_salt="tenant-b") == 0
        assert _complete(c, prompt, cache_salt="tenant-a") == PREFIX_BLOCKS * BLOCK + 16
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "cache_salt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"


@pytest.fixture()
def late_router(mock_cluster: Served, tmp_path: Path) -> Iterator[str]:
    env = {TOKEN_ENV: CLUSTER_TOKEN}  # the cluster's, as a second router would be given it
    proc, url = launch.start_router(tmp_path / "router.log", mock_cluster.redis_url, env=env)
    yield url
    assert proc.stop() == 0, proc.tail()


def test_a_second_router_started_late_routes_alike(mock_cluster: Served, late_router: str) -> None:
    prefix = _prefix(2)
    with mock_cluster.client() as c:
        _complete(c, prefix + [5] * 20)
    time.sleep(0.3)  # the prefill worker's KV events reach Redis (flushed every 50 ms)
    with httpx.Client(base_url=late_router, timeout=60) as late:
        # It learned the cache from Redis alone (and its stream since): a hit, not a guess.
        assert _complete(late, prefix + [6] * 20) == len(prefix)


def test_each_worker_dump_matches_its_state_in_redis(mock_cluster: Served) -> None:
    with mock_cluster.client() as c:
        _complete(c, _prefix(3) + [9] * 20)
    r = redis.Redis.from_url(mock_cluster.redis_url)
    records = Registry(r, token=CLUSTER_TOKEN).workers()
    assert len(records) == 6
    for rec in records:
        keys = KVKeys.of(rec.worker_id)
        for _ in range(50):  # bounded: events in flight reach Redis within 50 ms
            with grpc.insecure_channel(rec.grpc_address) as ch:
                stub = worker_pb2_grpc.WorkerStub(ch)
                dump = stub.DumpKV(worker_pb2.DumpKVRequest(), timeout=10, metadata=TOKEN_METADATA)
            state = parse_state(r.get(keys.state))
            if state == (dump.started_at_unix_ms, dump.seq):
                break
            time.sleep(0.05)
        assert state == (dump.started_at_unix_ms, dump.seq)
        assert {int(h) for h in r.smembers(keys.blocks)} == set(dump.block_hashes)
        assert dump.block_size == BLOCK


def test_a_worker_that_leaves_is_forgotten(
    mock_cluster: Served, tmp_path: Path, smollm_path: Path
) -> None:
    proc, address = launch.start_worker(
        tmp_path,
        "extra-prefill",
        "prefill",
        mock_cluster.redis_url,
        smollm_path,
        "--engine=mock",
        "--num-blocks=256",
        env={TOKEN_ENV: CLUSTER_TOKEN},  # without it, its registry record is not trusted
    )
    prefix = _prefix(4)
    try:
        with grpc.insecure_channel(address) as ch:  # warm its cache directly
            stub = worker_pb2_grpc.WorkerStub(ch)
            msg = worker_pb2.PrefillRequest(
                request_id="warm", prompt_token_ids=prefix + [1] * 20, params=_params()
            )
            stub.Prefill(msg, timeout=30, metadata=TOKEN_METADATA)
            abort = worker_pb2.AbortRequest(request_id="warm")
            stub.Abort(abort, timeout=10, metadata=TOKEN_METADATA)
        time.sleep(1.0)  # the router sees it in the registry (0.5 s) and its events
        with mock_cluster.client() as c:
            assert _complete(c, prefix + [2] * 20) == len(prefix)
        assert (
            mock_cluster.metric(
                "tandem_routed_requests_total", pool="prefill", worker="extra-prefill"
            )
            == 1
        )
    finally:
        assert proc.stop() == 0, proc.tail()
    time.sleep(1.5)  # deregistered on stop; the router refreshes every 0.5 s
    with mock_cluster.client() as c:
        assert _complete(c, prefix + [3] * 20) == 0  # purged: nobody holds it now
    r = redis.Redis.from_url(mock_cluster.redis_url)
    keys = KVKeys.of("extra-prefill")
    assert r.exists(keys.stream, keys.blocks, keys.state) == 0  # its KV state left Redis


def _params() -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(max_tokens=3, top_p=1.0, ignore_eos=True)
