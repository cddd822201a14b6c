"""One streaming request against an OpenAI-compatible server, timed; it never raises for a
failed request but records why it failed (see the categories in records.py).

TTFT is the offset of the first SSE chunk that carries text (a chat stream's role-only
first chunk does not count); E2E ends at `data: [DONE]`. Token counts come from the usage
chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx

from loadtest.records import CONNECTION, EMPTY, STREAM, TIMEOUT, RequestOutput

DRAIN_S = 1.0  # how long the rest of a stream after [DONE] is waited for


def make_http(timeout: float) -> httpx.AsyncClient:
    # No connection limit: httpx's default pool (100) would queue requests inside the client
    # and count that wait as the server's TTFT.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits)


class Client:
    def __init__(
        self, http: httpx.AsyncClient, base_url: str, headers: dict[str, str], timeout: float
    ) -> None:
        self.http, self.base, self.headers, self.timeout = http, base_url, headers, timeout

    async def send(
        self, path: str, body: dict[str, Any], workload: str, input_len: int
    ) -> RequestOutput:
        out = RequestOutput(workload, input_len=input_len)
        out.start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await self._exchange(path, body, out)
        except (TimeoutError, httpx.TimeoutException):
            out.fail(TIMEOUT, f"no complete answer within {self.timeout:g} s")
        if not out.end:
            out.end = time.perf_counter()
        return out

    async def _exchange(self, path: str, body: dict[str, Any], out: RequestOutput) -> None:
        request = self.http.build_request("POST", self.base + path, json=body, headers=self.headers)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as e:
            out.fail(CONNECTION, f"{type(e).__name__}: {e}")
            return
        try:
            if response.status_code >= 400:
                out.fail(f"http_{response.status_code}", _error_message(await response.aread()))
            else:
                await _read_events(response, out)
        except httpx.TimeoutException:
            raise
        except (httpx.TransportError, ValueError) as e:  # ValueError: a malformed event
            out.fail(STREAM, f"{type(e).__name__}: {e}")
        finally:
            await response.aclose()


async def _read_events(response: httpx.Response, out: RequestOutput) -> None:
    lines = response.aiter_lines()
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip()
        if data == "[DONE]":
            out.end = time.perf_counter()
            if not out.chunk_times:
                out.fail(EMPTY, "the stream carried no text")
            # Read the body to its end (the chunked terminator follows [DONE]): a response
            # closed before that closes its connection, and every request would pay for a
            # new one, on both sides. Briefly, and whatever happens: the answer is whole,
            # a server that keeps the stream open after [DONE] only loses its connection.
            with contextlib.suppress(TimeoutError, httpx.TransportError):
                async with asyncio.timeout(DRAIN_S):
                    async for _ in lines:
                        pass
            return
        event = json.loads(data)
        if "error" in event or event.get("object") == "error":
            out.fail(STREAM, _error_message(data.encode()))
            return
        _record(event, out)
    out.fail(STREAM, "the stream ended without [DONE]")


def _record(event: dict[str, Any], out: RequestOutput) -> None:
    now = time.perf_counter() - out.start
    for choice in event.get("choices") or ():
        text = choice.get("text") or (choice.get("delta") or {}).get("content")
        if text:
            if not out.chunk_times:
                out.ttft = now
            out.chunk_times.append(now)
            out.chunk_texts.append(text)
    usage = event.get("usage")
    if usage:
        out.usage_output_tokens = int(usage.get("completion_tokens", 0))
        out.input_len = int(usage.get("prompt_tokens", out.input_len))


def _error_message(raw: bytes) -> str:
    """OpenAI's {"error": {"message"}} or vLLM's {"object": "error", "message"}; else text."""
    text = raw.decode(errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:200]
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict) and "message" in err:
        return str(err["message"])[:200]
    return text[:200]
