"""One local cluster (`tandem serve`, as `make run` starts it) shared by the end-to-end
tests, and a colocated one beside it for comparison, joining the same Ray instance.

Both are package-scoped: they stop after the last test here, not at the end of the
session. Left running, their Ray and three idle workers took CPU from every later test on
this 2-core machine (CI's helm local run timed out starting its own two workers)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from loadtest.prometheus import parse_metrics
from services.cluster import launch
from services.cluster.cluster_token import METADATA_KEY, TOKEN_ENV
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc

API_KEY = "e2e-secret"
# The workers' gRPC opens to this token only (tandem serve reads it from its environment).
CLUSTER_TOKEN = "e2e-cluster-token"
TOKEN_METADATA = ((METADATA_KEY, CLUSTER_TOKEN),)
MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Served(launch.Served):
    def client(self, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300, **kw)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the router's /metrics, summed over the labels not named."""
        with self.client() as c:
            samples = parse_metrics(c.get("/metrics").text)
        want = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))

    def worker_stats(self) -> dict[str, worker_pb2.StatsResponse]:
        """Each live worker's Stats, straight from the worker over gRPC."""
        records = Registry(redis.Redis.from_url(self.redis_url), token=CLUSTER_TOKEN).workers()
        stats = {}
        for r in records:
            with grpc.insecure_channel(r.grpc_address) as ch:
                stub = worker_pb2_grpc.WorkerStub(ch)
                request = worker_pb2.StatsRequest()
                stats[r.worker_id] = stub.Stats(request, timeout=10, metadata=TOKEN_METADATA)
        return stats


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _serve(tmp: Path, model: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    s = launch.start_serve(
        tmp / "serve.log",
        f"--model={model}",
        f"--api-key={API_KEY}",
        "--no-dashboard",
        "--dtype=float32",  # transformers runs float32: greedy outputs must match exactly
        "--kv-cache-gb=0.25",
        "--local-prefill-tokens=32",  # short chats local, the questions below remote
        # every longer prompt remote, however deep the prefill queue: these tests check
        # the disaggregated path itself (the queue rule: tests/unit/test_dispatch.py)
        "--no-prefill-balance",
        "--cpus-per-worker=0.5",  # two clusters' workers share this machine's 2 cores
        *extra,
        env={TOKEN_ENV: CLUSTER_TOKEN, **(env or {})},
    )
    return Served(s.proc, s.url, s.redis_url, s.ray_address)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Served]:
    served = _serve(tmp_path_factory.mktemp("disagg"), smollm_path)
    yield served
    # Ctrl-C stops everything it started: Redis, Ray and the workers are gone.
    assert served.proc.stop() == 0, served.proc.tail()
    assert "tandem serve: stopped" in served.proc.tail()
    redis_address = served.redis_url.split("@")[-1].split("/")[0]  # after the password
    for address in (redis_address, served.ray_address):
        assert not _listening(address), f"{address} still answers after Ctrl-C"


@pytest.fixture(scope="module")  # its module only: six idle workers cost CPU
def mock_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Six mock workers (real block pools, KV events and NIXL; no model): routing at a
    scale this machine could not run with real models. A Ray of its own: its actors'
    names (prefill-0, ...) are the real cluster's too."""
    s = launch.start_serve(
        tmp_path_factory.mktemp("mock") / "serve.log",
        f"--api-key={API_KEY}",
        "--no-dashboard",
        "--engine=mock",
        "--num-blocks=256",
        "--prefill-workers=4",
        "--decode-workers=2",
        "--cpus-per-worker=0.1",
        "--local-prefill-tokens=0",  # every prompt goes to the prefill pool
        "--no-prefill-balance",
        env={TOKEN_ENV: CLUSTER_TOKEN},
    )
    served = Served(s.proc, s.url, s.redis_url, s.ray_address)
    yield served
    assert served.proc.stop() == 0, served.proc.tail()


@pytest.fixture(scope="package")
def colocated(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, cluster: Served
) -> Iterator[Served]:
    served = _serve(
        tmp_path_factory.mktemp("colocated"),
        smollm_path,
        "--mode=colocated",
        "--prefill-workers=0",
        "--decode-workers=1",
        # Joins the first cluster's Ray, which (Ray's default) requires its auth token.
        env={"RAY_ADDRESS": cluster.ray_address, "RAY_AUTH_MODE": "token"},
    )
    yield served
    assert served.proc.stop() == 0, served.proc.tail()
