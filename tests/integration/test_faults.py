"""Workers that fail or leave under streaming load, as real processes: a decode worker
killed with SIGKILL, one whose engine thread dies inside a live process, and a decode
worker and a router stopped with SIGTERM (a drain). Every stream completes with the text
of a fault-free run (greedy; the mock's tokens are a function of the token chain, so a
worker that takes a request over continues it exactly), and a failed worker is out of
routing within seconds.

    Redis ── prefill-0 ── decode-0, decode-1, decode-2   (mock workers, own processes)
          └─ tandem router --routing round-robin          (streams split across decoders)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import httpx
import pytest

from loadtest.prometheus import parse_metrics
from services.cluster import redis_client
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc
from services.router.breaker import COOLDOWN_S
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
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
        return _logged_at(
            self.router, f"worker {worker_id} is out of routing", f"worker {worker_id} left"
        )


def _start(
    tmp: Path,
    model: Path,
    timings: dict[str, str],
    decode_args: tuple[str, ...],
    router_args: tuple[str, ...],
) -> Cluster:
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


@pytest.fixture
def cluster_factory(tmp_path: Path, smollm_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[Cluster] = []

    def make(
        decode_args: tuple[str, ...] = (), router_args: tuple[str, ...] = (), **timings: str
    ) -> Cluster:
        """Workers named by `timings` (each with its mock timing) beside prefill-0."""
        started.append(_start(tmp_path, smollm_path, timings, decode_args, router_args))
        return started[-1]

    yield make
    for c in started:
        c.router.stop(signal.SIGTERM)
        for proc in c.workers.values():
            proc.stop(signal.SIGTERM)
        c.redis.stop()


def _body(i: int, stream: bool = True) -> dict[str, object]:
    return {
        "model": MODEL,
        "prompt": f"Story number {i}: once upon a time",
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


async def _stream(http: httpx.AsyncClient, i: int, started: asyncio.Event) -> str:
    body = _body(i)
    text, events = "", 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            text += event["choices"][0]["text"]
            events += 1
            if events == 5:  # the prefill's token and a few of the decode worker's
                started.set()
    return text


async def _run(url: str, fault=None) -> list[str]:  # type: ignore[no-untyped-def]
    """STREAMS concurrent greedy streams; `fault()` runs once every one is decoding."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        begun = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(_stream(http, i, begun[i])) for i in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in begun)), 30)
        if fault is not None:
            fault()
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)


def _logged_at(proc: Proc, *texts: str) -> float:
    """The unix time of the first log line holding any of `texts` (logging's asctime:
    local time to the millisecond)."""
    for line in proc.lines:
        if any(t in line for t in texts):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line with {texts}:\n{proc.tail()}")


def _wait_logged(proc: Proc, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in proc.lines):
        assert time.monotonic() < deadline, f"no {text!r} in:\n{proc.tail()}"
        time.sleep(0.05)


def test_a_decode_worker_killed_mid_stream_loses_no_stream(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    c = cluster_factory(**{"decode-0": TIMING, "decode-1": TIMING})
    want = asyncio.run(_run(c.url))  # round-robin: three streams on each decode worker
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(c.workers["decode-0"].proc.pid, signal.SIGKILL)
        killed_at.append(time.time())

    assert asyncio.run(_run(c.url, kill)) == want
    assert c.metric("tandem_decode_retries_total", when="mid_stream") >= 1
    _wait_logged(c.router, "worker decode-0 is out of routing")
    assert c.router_dropped("decode-0") - killed_at[0] < 3.0, c.router.tail()


def test_an_engine_that_dies_inside_a_live_worker_loses_no_stream(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    # decode-0's tenth forward pass raises: a few tokens into its three streams.
    c = cluster_factory(**{"decode-0": f"{TIMING},die_at_step=10", "decode-1": TIMING})
    got = asyncio.run(_run(c.url))
    assert c.metric("tandem_decode_retries_total") >= 1
    assert asyncio.run(_run(c.url)) == got  # all on decode-1 now: the fault-free texts
    worker = c.workers["decode-0"]
    _wait_logged(worker, "leaves the registry")
    died_at = _logged_at(worker, "engine loop died")
    assert _logged_at(worker, "leaves the registry") - died_at < 5.0
    assert c.router_dropped("decode-0") - died_at < 5.0
    assert "decode-0" not in c.registered() and worker.proc.poll() is None  # alive, unlisted


def test_a_decode_worker_stopped_with_sigterm_finishes_its_streams_first(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    c = cluster_factory(**{"decode-0": TIMING, "decode-1": TIMING})
    want = asyncio.run(_run(c.url))
    leaving = c.workers["decode-0"]
    assert asyncio.run(_run(c.url, lambda: leaving.proc.send_signal(signal.SIGTERM))) == want
    assert leaving.proc.wait(30) == 0, leaving.tail()
    assert c.metric("tandem_decode_retries_total") == 0  # they ended where they ran
    assert c.registered() == {"prefill-0", "decode-1"}


def test_a_router_stopped_with_sigterm_finishes_its_streams_first(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    c = cluster_factory(**{"decode-0": TIMING})
    want = asyncio.run(_run(c.url))
    got = asyncio.run(_run(c.url, lambda: c.router.proc.send_signal(signal.SIGTERM)))
    assert got == want  # every stream to its end, [DONE] included
    assert c.router.proc.wait(30) == 0, c.router.tail()
    assert "tandem router: stopped" in c.router.tail()


def test_a_burst_of_ten_times_capacity_is_refused_at_once_and_loses_nothing(
    cluster_factory,
) -> None:  # type: ignore[no-untyped-def]
    # One decode worker running 2 requests at a time: 4 places with the default queue.
    c = cluster_factory(decode_args=("--max-num-seqs=2",), **{"decode-0": TIMING})
    burst = 40

    async def one(http: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
        t0 = time.perf_counter()
        r = await http.post("/v1/completions", json=_body(i, stream=False))
        return r, time.perf_counter() - t0

    async def run() -> list[tuple[httpx.Response, float]]:
        limits = httpx.Limits(max_connections=burst)
        async with httpx.AsyncClient(base_url=c.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(burst)))

    results = asyncio.run(run())
    served = [(r, s) for r, s in results if r.status_code == 200]
    refused = [(r, s) for r, s in results if r.status_code == 429]
    assert len(served) + len(refused) == burst, {r.status_code for r, _ in results}
    assert len(served) >= 4 and len(refused) >= burst // 2
    assert all(r.json()["usage"]["completion_tokens"] == TOKENS for r, _ in served)
    assert all(r.headers["retry-after"] == "1" for r, _ in refused)
    # Told at once, not queued: every refusal came back before the first answer did.
    assert max(s for _, s in refused) < min(s for _, s in served)
    assert_idle(c.stats)  # nothing left running, held or leaked on any worker


def test_a_hung_then_killed_prefill_worker_costs_seconds_and_loses_nothing(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    # A fixed 3 s deadline: these prompts are too short for the measured one (unit-tested).
    c = cluster_factory(
        router_args=("--prefill-timeout-s=3",),
        **{"prefill-1": TIMING, "decode-0": TIMING, "decode-1": TIMING},
    )
    want = asyncio.run(_run(c.url))
    hung = c.workers["prefill-1"].proc.pid
    os.kill(hung, signal.SIGSTOP)  # round-robin: half the next prompts go to it
    try:
        t0 = time.monotonic()
        assert asyncio.run(_run(c.url)) == want
        assert time.monotonic() - t0 < 30  # one deadline, not the old 120 s per request
    finally:
        os.kill(hung, signal.SIGCONT)
    assert c.metric("tandem_prefill_retries_total", reason="deadline_exceeded") >= 3
    assert c.metric("tandem_worker_breaker_total", worker="prefill-1", change="opened") == 1
    time.sleep(COOLDOWN_S)  # then half-open: its next prefill that succeeds closes it
    deadline = time.monotonic() + 60
    while c.metric("tandem_worker_breaker_total", worker="prefill-1", change="closed") < 1:
        assert time.monotonic() < deadline, httpx.get(f"{c.url}/metrics").text + c.router.tail()
        assert asyncio.run(_run(c.url)) == want
    os.kill(hung, signal.SIGKILL)  # and gone for good: its calls fail at once
    assert asyncio.run(_run(c.url)) == want
    assert c.metric("tandem_prefill_fallbacks_total") == 0  # prefill-0 took every one
