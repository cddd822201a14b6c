"""bench/router_floor.py, the floor bench.router reads its figures against, serves what the
bench's client counts: a streamed completion with one text chunk per worker message, usage
and [DONE], through a real grpc.aio stream between two processes on 127.0.0.1."""

from __future__ import annotations

import asyncio

from bench.router_floor import FloorProc
from loadtest.client import Client, make_http


async def _one(url: str) -> tuple[int, int, bool]:
    async with make_http(10.0) as http:
        model = (await http.get(url + "/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "prompt": [11, 12, 13], "max_tokens": 5, "stream": True}
        out = await Client(http, url, {}, 10.0).send("/v1/completions", body, "floor", 3)
    return len(out.chunk_times), out.usage_output_tokens or 0, out.success


def test_the_floor_streams_one_chunk_per_worker_message() -> None:
    worker = FloorProc("worker", "5")
    try:
        front = FloorProc("front", str(worker.port))
        try:
            chunks, tokens, ok = asyncio.run(_one(f"http://127.0.0.1:{front.port}"))
        finally:
            front.stop()
    finally:
        worker.stop()
    assert ok
    assert chunks == 5
    assert tokens == 5  # from the usage event
    assert worker.proc.returncode is not None and front.proc.returncode is not None
