"""Workers that fail or leave under streaming load, as real processes: a decode worker
killed with SIGKILL, one whose engine thread dies inside a live process, and a decode
worker and a router stopped with SIGTERM (a drain: the router's /ready fails at once, and it
serves on for a delay before it stops accepting). Every stream completes with the text
of a fault-free run (greedy; the mock's tokens are a function of the token chain, so a
worker that takes a request over continues it exactly), and a failed worker is out of
routing within seconds.

    Redis ── prefill-0 ── decode-0, decode-1, decode-2   (mock workers, own processes)
          └─ tandem router --routing round-robin          (streams split across decoders)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import httpx
import pytest

from services.router.breaker import COOLDOWN_S
from tests.helpers.fault_cluster import (
    STREAMS,
    TIMING,
    TOKENS,
    Cluster,
    ClusterFactory,
    body,
    logged_at,
    run_streams,
    stream_text,
    wait_logged,
)
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
DRAIN_DELAY_S = 3.0  # the router's, in the drain test


def test_a_decode_worker_killed_mid_stream_loses_no_stream(cluster_factory: ClusterFactory) -> None:
    c = cluster_factory(**{"decode-0": TIMING, "decode-1": TIMING})
    want = asyncio.run(run_streams(c.url))  # round-robin: three streams on each decode worker
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(c.workers["decode-0"].proc.pid, signal.SIGKILL)
        killed_at.append(time.time())

    assert asyncio.run(run_streams(c.url, kill)) == want
    assert c.metric("tandem_decode_retries_total", when="mid_stream") >= 1
    wait_logged(c.router, "worker decode-0 is out of routing")
    assert c.router_dropped("decode-0") - killed_at[0] < 3.0, c.router.tail()


def test_an_engine_that_dies_inside_a_live_worker_loses_no_stream(
    cluster_factory: ClusterFactory,
) -> None:
    # decode-0's tenth forward pass raises: a few tokens into its three streams.
    c = cluster_factory(**{"decode-0": f"{TIMING},die_at_step=10", "decode-1": TIMING})
    got = asyncio.run(run_streams(c.url))
    assert c.metric("tandem_decode_retries_total") >= 1
    assert asyncio.run(run_streams(c.url)) == got  # all on decode-1 now: the fault-free texts
    worker = c.workers["decode-0"]
    wait_logged(worker, "leaves the registry")
    died_at = logged_at(worker, "engine loop died")
    assert logged_at(worker, "leaves the registry") - died_at < 5.0
    assert c.router_dropped("decode-0") - died_at < 5.0
    assert "decode-0" not in c.registered() and worker.proc.poll() is None  # alive, unlisted


def test_a_decode_worker_stopped_with_sigterm_finishes_its_streams_first(
    cluster_factory: ClusterFactory,
) -> None:
    c = cluster_factory(**{"decode-0": TIMING, "decode-1": TIMING})
    want = asyncio.run(run_streams(c.url))
    leaving = c.workers["decode-0"]
    assert asyncio.run(run_streams(c.url, lambda: leaving.proc.send_signal(signal.SIGTERM))) == want
    assert leaving.proc.wait(30) == 0, leaving.tail()
    assert c.metric("tandem_decode_retries_total") == 0  # they ended where they ran
    assert c.registered() == {"prefill-0", "decode-1"}


def test_a_router_stopped_with_sigterm_finishes_its_streams_first(
    cluster_factory: ClusterFactory,
) -> None:
    c = cluster_factory(router_args=(f"--drain-delay-s={DRAIN_DELAY_S}",), **{"decode-0": TIMING})
    want = asyncio.run(run_streams(c.url))
    got, drained = asyncio.run(_drain_under_load(c))
    assert got == want  # every stream to its end, [DONE] included
    assert c.router.proc.wait(30) == 0, c.router.tail()
    exited = time.monotonic()
    assert "tandem router: stopped" in c.router.tail()
    # /ready failed at once, while every stream still ran ...
    assert drained.not_ready_after_s < 1.0 and drained.streams_running == STREAMS
    # ... the router went on accepting and serving for the delay, telling clients to go ...
    assert drained.served_during_delay == want[0] and drained.connection == "close"
    # ... and then stopped.
    assert exited - drained.sigterm_at >= DRAIN_DELAY_S, c.router.tail()


@dataclass(slots=True)
class _Drained:
    sigterm_at: float  # monotonic
    not_ready_after_s: float  # SIGTERM -> the first /ready that answered 503
    streams_running: int  # of those begun before the SIGTERM, when /ready failed
    served_during_delay: str  # a request on a new connection after /ready failed
    connection: str  # that response's Connection header


async def _drain_under_load(c: Cluster) -> tuple[list[str], _Drained]:
    """STREAMS streams; once they run, SIGTERM, and the router seen from new connections."""
    async with httpx.AsyncClient(base_url=c.url, timeout=60) as http:
        begun = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(stream_text(http, i, begun[i])) for i in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in begun)), 30)
        sigterm_at = time.monotonic()
        c.router.proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=c.url, timeout=60) as fresh:
            for _ in range(40):  # bounded: 2 s
                if (await fresh.get("/ready")).status_code == 503:
                    break
                await asyncio.sleep(0.05)
            not_ready = time.monotonic() - sigterm_at
            running = sum(not t.done() for t in tasks)
            r = await fresh.post("/v1/completions", json=body(0, stream=False))
            assert r.status_code == 200, r.text
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    text = r.json()["choices"][0]["text"]
    return texts, _Drained(sigterm_at, not_ready, running, text, r.headers.get("connection", ""))


def test_a_burst_of_ten_times_capacity_is_refused_at_once_and_loses_nothing(
    cluster_factory: ClusterFactory,
) -> None:
    # One decode worker running 2 requests at a time: 4 places with the default queue.
    c = cluster_factory(decode_args=("--max-num-seqs=2",), **{"decode-0": TIMING})
    burst = 40

    async def one(http: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
        t0 = time.perf_counter()
        r = await http.post("/v1/completions", json=body(i, stream=False))
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


def test_a_hung_then_killed_prefill_worker_costs_seconds_and_loses_nothing(
    cluster_factory: ClusterFactory,
) -> None:
    # A fixed 3 s deadline: these prompts are too short for the measured one (unit-tested).
    c = cluster_factory(
        router_args=("--prefill-timeout-s=3",),
        **{"prefill-1": TIMING, "decode-0": TIMING, "decode-1": TIMING},
    )
    want = asyncio.run(run_streams(c.url))
    hung = c.workers["prefill-1"].proc.pid
    os.kill(hung, signal.SIGSTOP)  # round-robin: half the next prompts go to it
    try:
        t0 = time.monotonic()
        assert asyncio.run(run_streams(c.url)) == want
        assert time.monotonic() - t0 < 30  # one deadline, not the old 120 s per request
    finally:
        os.kill(hung, signal.SIGCONT)
    assert c.metric("tandem_prefill_retries_total", reason="deadline_exceeded") >= 3
    assert c.metric("tandem_worker_breaker_total", worker="prefill-1", change="opened") == 1
    time.sleep(COOLDOWN_S)  # then half-open: its next prefill that succeeds closes it
    deadline = time.monotonic() + 60
    while c.metric("tandem_worker_breaker_total", worker="prefill-1", change="closed") < 1:
        assert time.monotonic() < deadline, httpx.get(f"{c.url}/metrics").text + c.router.tail()
        assert asyncio.run(run_streams(c.url)) == want
    os.kill(hung, signal.SIGKILL)  # and gone for good: its calls fail at once
    assert asyncio.run(run_streams(c.url)) == want
    assert c.metric("tandem_prefill_fallbacks_total") == 0  # prefill-0 took every one
