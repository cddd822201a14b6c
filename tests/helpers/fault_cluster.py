"""A small cluster of real processes for fault tests, and the streams that load it.

    Redis ── prefill-0 ── decode-0, decode-1, ...   (mock workers, own processes)
          └─ tandem router --routing round-robin    (streams split across decoders)

`cluster_factory` (a fixture: tests/integration/conftest.py) starts one per call and stops
all of them, by pid, after the test. Greedy mock streams are a function of the prompt, so
a fault-free run's texts are what every faulty run must give too.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import httpx

from loadtest.prometheus import parse_metrics
from services.cluster import redis_client
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc

MODEL = "SmolLM2-135M-Instruct"
# 40 ms a decode step: a 32-token answer streams for over a second, long enough to be cut.
TIMING = "step_ms=1,prefill_ms_per_token=0.01,decode_ms=40"
STREAMS = 6
TOKENS = 32


@dataclass
class Cluster:
    redis: RedisServer
    router: Proc
    url: str
    workers: dict[str, Proc]
    addresses: dict[str, str]

    def metric(self, name: str, **labels: str) -> float:
        samples = parse_metrics(httpx.get(f"{self.url}/metrics").text)
        want = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))

    def stats(self) -> dict[str, worker_pb2.StatsResponse]:
        stats = {}
        for worker_id, address in self.addresses.items():
            with grpc.insecure_channel(address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                stats[worker_id] = stub.Stats(worker_pb2.StatsRequest(), timeout=10)
        return stats

    def registered(self) -> set[str]:
        return {r.worker_id for r in Registry(redis_client.connect(self.redis.url)).workers()}

    def router_dropped(self, worker_id: str) -> float:
        """When the router stopped routing to `worker_id`: its health checks failed, or
        its record left the registry, whichever the router noticed first (unix time)."""
        return logged_at(
            self.router, f"worker {worker_id} is out of routing", f"worker {worker_id} left"
        )

    def stop(self) -> None:
        self.router.stop(signal.SIGINT)  # nothing in flight: no drain delay to sit out
        for proc in self.workers.values():
            proc.stop(signal.SIGTERM)
        self.redis.stop()


def start_cluster(
    tmp: Path,
    model: Path,
    timings: dict[str, str],
    decode_args: tuple[str, ...] = (),
    router_args: tuple[str, ...] = (),
) -> Cluster:
    """prefill-0 and the workers named by `timings` (each with its mock timing), and a
    router; `router_args` come last, so they override the defaults here."""
    redis = RedisServer()
    workers: dict[str, Proc] = {}
    addresses: dict[str, str] = {}
    try:
        for worker_id in ("prefill-0", *timings):
            role = worker_id.split("-")[0]
            timing = timings.get(worker_id, TIMING)
            extra = decode_args if role == "decode" else ()
            workers[worker_id], addresses[worker_id] = start_worker(
                tmp,
                worker_id,
                role,
                redis.url,
                model,
                "--engine=mock",
                f"--mock-timing={timing}",
                *extra,
            )
        router, url = start_router(
            tmp / "router.log",
            redis.url,
            f"--model={model}",
            "--routing=round-robin",
            "--local-prefill-tokens=0",
            "--no-prefill-balance",
            *router_args,
        )
    except BaseException:
        for proc in workers.values():
            proc.stop(signal.SIGKILL)
        redis.stop()
        raise
    return Cluster(redis, router, url, workers, addresses)


ClusterFactory = Callable[..., Cluster]


def cluster_factory_fixture(tmp: Path, model: Path) -> Iterator[ClusterFactory]:
    """The body of the `cluster_factory` fixture."""
    started: list[Cluster] = []

    def make(
        decode_args: tuple[str, ...] = (), router_args: tuple[str, ...] = (), **timings: str
    ) -> Cluster:
        """Workers named by `timings` (each with its mock timing) beside prefill-0."""
        started.append(start_cluster(tmp, model, timings, decode_args, router_args))
        return started[-1]

    yield make
    for c in started:
        c.stop()


def body(i: int, stream: bool = True, prompt: str | None = None) -> dict[str, object]:
    return {
        "model": MODEL,
        "prompt": prompt or f"Story number {i}: once upon a time",
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


async def stream_text(http: httpx.AsyncClient, i: int, started: asyncio.Event | None = None) -> str:
    """One streamed completion's text; `started` is set once a few tokens are in."""
    text, events = "", 0
    async with http.stream("POST", "/v1/completions", json=body(i)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            text += event["choices"][0]["text"]
            events += 1
            if events == 5 and started is not None:  # the prefill's token and a few more
                started.set()
    return text


async def run_streams(url: str, fault: Callable[[], None] | None = None) -> list[str]:
    """STREAMS concurrent greedy streams; `fault()` runs once every one is decoding."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        begun = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(stream_text(http, i, begun[i])) for i in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in begun)), 30)
        if fault is not None:
            fault()
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)


def logged_at(proc: Proc, *texts: str) -> float:
    """The unix time of the first log line holding any of `texts` (logging's asctime:
    local time to the millisecond)."""
    for line in proc.lines:
        if any(t in line for t in texts):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line with {texts}:\n{proc.tail()}")


def wait_logged(proc: Proc, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in proc.lines):
        assert time.monotonic() < deadline, f"no {text!r} in:\n{proc.tail()}"
        time.sleep(0.05)
