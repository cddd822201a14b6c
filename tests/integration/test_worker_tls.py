"""TLS on a worker's gRPC (services/cluster/worker_tls.py) and token stream, as processes: a
worker given a certificate serves TLS only on both, a plain-text caller gets nowhere, and
the router, given the CA, checks the worker's certificate and serves through it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.sampling_params import SamplingParams
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.worker_tls import CA_ENV, CERT_ENV, KEY_ENV
from services.router.token_stream import TokenStream
from services.router.worker_error import WorkerError
from services.wire import DecodeCall
from tests.helpers.tls_certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.slow


@dataclass
class Secured:
    files: TlsFiles
    worker: Proc
    address: str
    stream_address: str
    url: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("tls")
    files = make_tls_files(tmp)
    with RedisServer() as redis:
        worker, address = start_worker(
            tmp,
            "both-0",
            "both",
            redis.url,
            smollm_path,
            "--engine=mock",
            env={CERT_ENV: str(files.cert), KEY_ENV: str(files.key)},
        )
        try:
            router, url = start_router(
                tmp / "router.log",
                redis.url,
                f"--model={smollm_path}",
                "--mode=colocated",
                env={CA_ENV: str(files.ca)},
            )
            try:
                stream_address = worker.wait_for("token stream on", 10).rsplit(" ", 1)[-1]
                yield Secured(files, worker, address, stream_address.strip(), url)
            finally:
                router.stop(signal.SIGINT)
        finally:
            worker.stop(signal.SIGTERM)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status  # type: ignore[no-any-return]


def test_a_plain_text_caller_gets_nowhere(secured: Secured) -> None:
    with grpc.insecure_channel(secured.address) as channel, pytest.raises(grpc.RpcError) as e:
        _health(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_caller_that_trusts_the_ca_gets_through(secured: Secured) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=secured.files.ca.read_bytes())
    with grpc.secure_channel(secured.address, credentials) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_the_router_serves_over_tls(secured: Secured) -> None:
    body = {"model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 4}
    r = httpx.post(f"{secured.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4


async def _stream_tokens(address: str, ca: bytes | None) -> int:
    ts = TokenStream(address, None, ca)
    try:
        n = 0
        call = DecodeCall("tls", [5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
        async for reply in ts.decode(call):
            n += len(reply.token_ids)
        return n
    finally:
        await ts.close()


def test_the_token_stream_is_tls_only_too(secured: Secured) -> None:
    assert asyncio.run(_stream_tokens(secured.stream_address, secured.files.ca.read_bytes())) == 3
    with pytest.raises(WorkerError) as plain:
        asyncio.run(_stream_tokens(secured.stream_address, None))
    assert plain.value.code == "unavailable"
