"""bench/router_floor.py, the floors bench.router reads its figures against, serve what the
bench's client counts: a streamed completion with one text chunk per worker message, usage
and [DONE], through a real grpc.aio stream, or one shared TCP connection, between two
processes on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from bench.router_floor import FloorProc
from loadtest.client import Client, make_http


async def _one(url: str, prompt: list[int]) -> tuple[int, int, bool]:
    async with make_http(10.0) as http:
        model = (await http.get(url + "/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "prompt": prompt, "max_tokens": 5, "stream": True}
        out = await Client(http, url, {}, 10.0).send("/v1/completions", body, "floor", 3)
    return len(out.chunk_times), out.usage_output_tokens or 0, out.success


async def _several(url: str, n: int) -> list[tuple[int, int, bool]]:
    return await asyncio.gather(*(_one(url, [11, 12, i]) for i in range(n)))


@pytest.mark.parametrize("leg", ["", "tcp-"], ids=["grpc", "tcp"])
def test_the_floor_streams_one_chunk_per_worker_message(leg: str) -> None:
    worker = FloorProc(leg + "worker", "5")
    try:
        front = FloorProc(leg + "front", str(worker.port))
        try:
            # Several at once: over TCP they share the front's one connection.
            results = asyncio.run(_several(f"http://127.0.0.1:{front.port}", 4))
        finally:
            front.stop()
    finally:
        worker.stop()
    assert results == [(5, 5, True)] * 4  # chunks, output tokens from the usage event, ok
    assert worker.proc.returncode is not None and front.proc.returncode is not None
