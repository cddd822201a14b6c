"""Requests that find no worker to serve them (the whole cluster scaled to zero): held
until one is routable, bounded in number and in time, and counted for the autoscaler
(services/router/cold_start.py), against fake WorkerClients. The autoscaler's side is in
test_autoscaler_loop.py; a real cluster going to zero and back in tests/e2e/test_autoscale.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.sampling_params import SamplingParams
from services.pb.events_pb2 import WorkerRecord
from services.router.backend import BackendError, GenerateRequest, TokenDelta
from services.router.dispatch import Dispatcher
from services.router.workers import WorkerRef
from tests.helpers.dispatch_fakes import FakeWorker, chunk, dispatcher


def _request(i: int) -> GenerateRequest:
    return GenerateRequest(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=2))


async def _collect(d: Dispatcher, i: int) -> list[TokenDelta]:
    return [delta async for delta in d.generate(_request(i))]


def _add_decode_worker(d: Dispatcher, fake: FakeWorker) -> None:
    record = WorkerRecord(worker_id="decode-0", role="decode", block_size=4)
    d.cluster.workers.workers["decode-0"] = WorkerRef(record, fake)  # type: ignore[arg-type]


def test_held_requests_are_served_once_a_worker_starts_and_counted_meanwhile() -> None:
    published: list[int] = []
    d, metrics = dispatcher(hold_s=10.0, publish_held=lambda _router, n: published.append(n))
    decode = FakeWorker(chunks=[chunk([5, 6], done=True)])

    async def go() -> tuple[list[list[TokenDelta]], float, float]:
        assert await d.ready()  # a router that holds is ready with no worker
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_collect(d, i)) for i in range(3)]
        await asyncio.sleep(0.3)
        held = metrics.requests_held._value.get()
        _add_decode_worker(d, decode)
        out = await asyncio.gather(*tasks)
        await asyncio.sleep(0.05)  # the last one out publishes 0 off the event loop
        await d.close()
        return out, held, time.monotonic() - t0

    out, held, took = asyncio.run(go())
    assert held == 3 and metrics.requests_held._value.get() == 0
    assert [[o.token_ids for o in r] for r in out] == [[[5, 6]]] * 3
    assert len(decode.decodes) == 3 and 0.3 <= took < 2.0
    assert published[0] >= 1 and max(published) == 3 and published[-1] == 0


def test_past_the_wait_a_held_request_gets_503_with_retry_after() -> None:
    d, metrics = dispatcher(hold_s=0.3)

    async def go() -> float:
        t0 = time.monotonic()
        with pytest.raises(BackendError) as e:
            await _collect(d, 0)
        await d.close()
        assert e.value.status == 503 and e.value.retry_after_s == 5
        assert "no decode worker started within 0.3 s" in e.value.message
        return time.monotonic() - t0

    assert 0.3 <= asyncio.run(go()) < 1.5
    assert metrics.held_timeouts._value.get() == 1 and metrics.requests_held._value.get() == 0


def test_more_than_max_held_are_refused_at_once() -> None:
    d, _ = dispatcher(hold_s=5.0, max_held=2)

    async def go() -> BackendError:
        held = [asyncio.create_task(_collect(d, i)) for i in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as e:
            await _collect(d, 2)
        assert time.monotonic() - t0 < 0.1  # at once, not after the wait
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await d.close()
        return e.value

    refused = asyncio.run(go())
    assert refused.status == 503 and "2 requests already wait" in refused.message


def test_without_holding_an_empty_pool_is_503_at_once() -> None:
    d, _ = dispatcher()

    async def go() -> BackendError:
        assert not await d.ready()
        with pytest.raises(BackendError) as e:
            await _collect(d, 0)
        await d.close()
        return e.value

    refused = asyncio.run(go())
    assert refused.status == 503 and refused.message == "no decode worker is available"
