"""A small OpenAI-compatible server with scripted, known timings, for the load generator's
tests: real HTTP and SSE on 127.0.0.1 (uvicorn in a thread), no model.

Every request streams `max_tokens` tokens (the word " the", one token for SmolLM2's
tokenizer): the first `ttft` seconds after it arrives, then one every `itl` seconds. A
chunk may carry two tokens (`double_every`), sent after two gaps. Failures are injected by
request number (1-based, in arrival order): HTTP 500, a stream that hangs, a stream that
breaks with an error event after two chunks. `/tokenize` (vLLM's shape) answers with
`Script.tokenize`, when given.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

WORD = " the"


@dataclass
class Script:
    ttft: float = 0.05
    itl: float = 0.02
    fail_every: int = 0  # every n-th request: HTTP 500
    hang_every: int = 0  # every n-th request: headers, then nothing
    break_every: int = 0  # every n-th request: an error event after two chunks
    double_every: int = 0  # every n-th chunk after the first carries two tokens
    usage: bool = True  # honour stream_options.include_usage
    metrics: bool = True  # serve /metrics
    tokenize: Callable[[str], list[int]] | None = None  # serve /tokenize with it


@dataclass
class Seen:
    """What the server saw, for the tests to check."""

    arrivals: list[float] = field(default_factory=list)  # perf_counter at arrival
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    tokenized: list[dict[str, Any]] = field(default_factory=list)  # /tokenize bodies
    # (host, port) of each completion's client: one per connection
    clients: set[tuple[str, int]] = field(default_factory=set)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    return sum(len(m["content"].split()) for m in body.get("messages", []))


class ScriptedServer:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.seen = Seen()
        self.app = self._make_app()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        config.timeout_graceful_shutdown = 1
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],), daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

        @app.get("/metrics")
        async def metrics() -> Response:
            if not self.script.metrics:
                return PlainTextResponse("not found", status_code=404)
            n = len(self.seen.arrivals)
            text = (
                "# TYPE tandem_requests_total counter\n"
                f'tandem_requests_total{{route="local_prefill",status="ok"}} {n}\n'
                "# TYPE tandem:prompt_tokens_total counter\n"
                f"tandem:prompt_tokens_total {self.seen.prompt_tokens}\n"
                "# TYPE tandem:prompt_tokens_cached_total counter\n"
                f"tandem:prompt_tokens_cached_total {self.seen.prompt_tokens // 4}\n"
            )
            return PlainTextResponse(text)

        @app.post("/tokenize")
        async def tokenize(request: Request) -> Response:
            if self.script.tokenize is None:
                return PlainTextResponse("not found", status_code=404)
            self.seen.tokenized.append(body := await request.json())
            ids = self.script.tokenize(body["prompt"])
            return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": 2048})

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            self._saw_client(request)
            return await self._answer(await request.json(), chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self._saw_client(request)
            return await self._answer(await request.json(), chat=True)

        return app

    def _saw_client(self, request: Request) -> None:
        if request.client is not None:
            self.seen.clients.add((request.client.host, request.client.port))

    async def _answer(self, body: dict[str, Any], chat: bool) -> Response:
        seen, s = self.seen, self.script
        seen.arrivals.append(time.perf_counter())
        seen.bodies.append(body)
        seen.prompt_tokens += _prompt_tokens(body)
        n = len(seen.arrivals)
        if s.fail_every and n % s.fail_every == 0:
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=500)
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        return StreamingResponse(self._stream(body, chat, n), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], chat: bool, n: int) -> AsyncIterator[bytes]:
        s = self.script
        try:
            if chat:  # the role-only first chunk: it carries no text and is not the TTFT
                yield _event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            if s.hang_every and n % s.hang_every == 0:
                await asyncio.sleep(3600)
            await asyncio.sleep(s.ttft)
            left, sent = int(body["max_tokens"]), 0
            while left > 0:
                k = 2 if s.double_every and sent and sent % s.double_every == 0 and left > 1 else 1
                if sent:
                    await asyncio.sleep(s.itl * k)
                yield _event(self._chunk(WORD * k, chat))
                left, sent = left - k, sent + 1
                if s.break_every and n % s.break_every == 0 and sent == 2:
                    yield _event({"error": {"message": "scripted break", "code": 500}})
                    yield b"data: [DONE]\n\n"
                    return
            if s.usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": _prompt_tokens(body),
                    "completion_tokens": body["max_tokens"],
                }
                yield _event({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:
            self.seen.in_flight -= 1

    @staticmethod
    def _chunk(text: str, chat: bool) -> dict[str, Any]:
        if chat:
            return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        return {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
