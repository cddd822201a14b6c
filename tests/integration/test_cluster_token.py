"""A worker's gRPC with a cluster token (services/cluster/cluster_token.py), as processes:
reaching its port is not enough. Calls without the token, or with another, are refused
(UNAUTHENTICATED); the router, given the token through its environment, serves through it;
the health service stays open for probes; the token is on no process's command line."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cluster.cluster_token import METADATA_KEY, TOKEN_ENV, new_token
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.redis_server import RedisServer
from services.pb import worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.slow


@dataclass
class Guarded:
    token: str
    worker: Proc
    address: str
    router: Proc
    url: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("token")
    token = new_token()
    env = {TOKEN_ENV: token}
    with RedisServer() as redis:
        worker, address = start_worker(
            tmp, "both-0", "both", redis.url, smollm_path, "--engine=mock", env=env
        )
        try:
            router, url = start_router(
                tmp / "router.log",
                redis.url,
                f"--model={smollm_path}",
                "--mode=colocated",
                env=env,
            )
            try:
                yield Guarded(token, worker, address, router, url)
            finally:
                router.stop(signal.SIGTERM)
        finally:
            worker.stop(signal.SIGTERM)


def _stats(address: str, metadata: tuple[tuple[str, str], ...] | None) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        stub.Stats(worker_pb2.StatsRequest(), timeout=10, metadata=metadata)


@pytest.mark.parametrize("metadata", [None, ((METADATA_KEY, "not-the-token"),)])
def test_a_call_without_the_token_is_refused(
    guarded: Guarded, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _stats(guarded.address, metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(guarded.address) as channel:  # a streaming rpc, too
        stream = worker_pb2_grpc.WorkerStub(channel).Decode(
            worker_pb2.DecodeRequest(request_id="x", prompt_token_ids=[1]), metadata=metadata
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(stream)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_token_opens_it_and_health_needs_none(guarded: Guarded) -> None:
    _stats(guarded.address, ((METADATA_KEY, guarded.token),))
    with grpc.insecure_channel(guarded.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_router_serves_through_it_and_no_command_line_shows_it(guarded: Guarded) -> None:
    body = {"model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 4}
    r = httpx.post(f"{guarded.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    for proc in (guarded.worker, guarded.router):
        with open(f"/proc/{proc.proc.pid}/cmdline", "rb") as f:
            assert guarded.token.encode() not in f.read()
