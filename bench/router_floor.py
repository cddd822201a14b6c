"""The floor under `make bench-router`: the stack the router stands on, with nothing of ours.

    floor worker: a grpc.aio server whose one server-streaming method answers any request
                  with `--messages` small messages at once (a worker that costs nothing)
    floor front:  uvicorn (uvloop, httptools, as `tandem router` runs it) serving a bare
                  ASGI app: read the body, parse its JSON, open one grpc.aio stream to the
                  floor worker, write one OpenAI-shaped SSE event per message, then the
                  usage event and [DONE]

No validation, routing, admission, tokenizer, metrics or middleware: what is left is HTTP
in, one gRPC stream per request and SSE out, each in Python's asyncio on one event loop,
which the design prescribes for the router and the worker's edge. bench.router drives it
with the same client, levels and CPU counters as the real router, in the same run, so the
real router's figures read against what its stack costs on this machine at that moment.

    python -m bench.router_floor worker MESSAGES   prints "floor worker on PORT"
    python -m bench.router_floor front WORKER_PORT prints "floor front on PORT"
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

METHOD = "/floor.Worker/Decode"
READY = "floor {} on "  # + the port
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# ---- the worker -------------------------------------------------------------------------
def run_worker(messages: int) -> None:
    import grpc
    import uvloop

    async def decode(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(messages):
            yield b'{"text": " tok", "index": %d}' % i

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(decode)
        service = grpc.method_handlers_generic_handler("floor.Worker", {"Decode": handler})
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(READY.format("worker") + str(port), flush=True)
        await server.wait_for_termination()

    uvloop.run(serve())


# ---- the front --------------------------------------------------------------------------
def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def make_app(worker_port: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    import grpc

    channel: list[grpc.aio.Channel] = []  # made on the server's loop, at start-up
    models = json.dumps({"object": "list", "data": [{"id": "floor", "object": "model"}]})

    async def lifespan(receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        channel.append(grpc.aio.insecure_channel(f"127.0.0.1:{worker_port}"))
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await channel[0].close()
        await send({"type": "lifespan.shutdown.complete"})

    async def complete(receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = json.loads(body)
        call = channel[0].unary_stream(METHOD)(json.dumps(req["prompt"]).encode())
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = {"id": "cmpl-floor", "object": "text_completion", "model": req["model"]}
        n = 0
        async for raw in call:
            piece = json.loads(raw)
            n += 1
            chunk = {
                **head,
                "created": int(time.time()),
                "choices": [{**piece, "finish_reason": None}],
            }
            await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
        prompt_tokens = len(req["prompt"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
        }
        tail = _event({**head, "created": int(time.time()), "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["method"] == "GET":  # /v1/models: the client asks for the model's name
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": models.encode()})
        else:
            await complete(receive, send)

    return app


def run_front(worker_port: int) -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(worker_port), loop="uvloop", http="httptools", log_level="warning"
    )
    print(READY.format("front") + str(sock.getsockname()[1]), flush=True)
    uvicorn.Server(config).run(sockets=[sock])


# ---- the parent's side ------------------------------------------------------------------
class FloorProc:
    """One of the two, as a child process; its port read from the line it prints."""

    def __init__(self, *args: str, timeout_s: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.router_floor", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first line, or "" if it died
        if not line.startswith(READY.format(args[0])):
            self.stop()
            raise RuntimeError(f"floor {args[0]} did not start: {line!r}")
        self.port = int(line.rsplit(" ", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"] and len(argv) == 2:
        run_worker(int(argv[1]))
    elif argv[:1] == ["front"] and len(argv) == 2:
        run_front(int(argv[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
