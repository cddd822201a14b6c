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

The same pair with the gRPC leg replaced (`tcp-worker`, `tcp-front`): one TCP connection
per front, opened at start-up, carrying every request as length-prefixed frames tagged by
request id (one frame up per request, one down per message, as Dynamo streams responses
and vLLM's engine core talks to its front over ZMQ). What a token stream off grpc.aio
would stand on: measured beside the gRPC floor so the two read against each other.

    python -m bench.router_floor worker MESSAGES      prints "floor worker on PORT"
    python -m bench.router_floor front WORKER_PORT    prints "floor front on PORT"
    python -m bench.router_floor tcp-worker MESSAGES  prints "floor tcp-worker on PORT"
    python -m bench.router_floor tcp-front WORKER_PORT prints "floor tcp-front on PORT"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
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


# ---- the worker over TCP ----------------------------------------------------------------
# A frame: a 4-byte little-endian length, then the payload. Up: b"ID PROMPT-JSON"; down:
# b"ID MORE" per message (MORE b"0" on the last), one frame and one loop pass each, as a
# worker sends one message per step.
_LEN = struct.Struct("<I")


def _frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return await reader.readexactly(n)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run_tcp_worker(messages: int) -> None:
    import uvloop

    async def answer(rid: bytes, writer: asyncio.StreamWriter) -> None:
        for i in range(messages):
            writer.write(_frame(rid + (b" 1" if i < messages - 1 else b" 0")))
            await writer.drain()
            await asyncio.sleep(0)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        tasks: set[asyncio.Task[None]] = set()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                rid = (await _read_frame(reader)).split(b" ", 1)[0]
                task = asyncio.ensure_future(answer(rid, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        print(READY.format("tcp-worker") + str(server.sockets[0].getsockname()[1]), flush=True)
        await server.serve_forever()

    uvloop.run(serve())


# ---- the front --------------------------------------------------------------------------
def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _GrpcLeg:
    """One grpc.aio stream per request."""

    def __init__(self, worker_port: int) -> None:
        self.port = worker_port

    async def start(self) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def stop(self) -> None:
        await self.channel.close()

    async def open(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for raw in self.channel.unary_stream(METHOD)(json.dumps(req["prompt"]).encode()):
            yield json.loads(raw)


class _TcpLeg:
    """One TCP connection for all requests; a reader task hands frames to their request."""

    def __init__(self, worker_port: int) -> None:
        self.port = worker_port
        self.queues: dict[bytes, asyncio.Queue[bool]] = {}
        self.next_id = 0

    async def start(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        _no_delay(self.writer)
        self.reader_task = asyncio.ensure_future(self._demux(reader))

    async def stop(self) -> None:
        self.reader_task.cancel()
        self.writer.close()

    async def _demux(self, reader: asyncio.StreamReader) -> None:
        while True:
            rid, more = (await _read_frame(reader)).split(b" ")
            self.queues[rid].put_nowait(more == b"1")

    async def open(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        rid = str(self.next_id).encode()
        self.next_id += 1
        queue: asyncio.Queue[bool] = asyncio.Queue()
        self.queues[rid] = queue
        self.writer.write(_frame(rid + b" " + json.dumps(req["prompt"]).encode()))
        try:
            more, i = True, 0
            while more:
                more = await queue.get()
                yield {"text": " tok", "index": i}
                i += 1
        finally:
            del self.queues[rid]


def make_app(leg: _GrpcLeg | _TcpLeg) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    models = json.dumps({"object": "list", "data": [{"id": "floor", "object": "model"}]})

    async def lifespan(receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        await leg.start()  # on the server's loop
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await leg.stop()
        await send({"type": "lifespan.shutdown.complete"})

    async def complete(receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = json.loads(body)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = {"id": "cmpl-floor", "object": "text_completion", "model": req["model"]}
        n = 0
        async for piece in leg.open(req):
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


def run_front(name: str, leg: _GrpcLeg | _TcpLeg) -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(make_app(leg), loop="uvloop", http="httptools", log_level="warning")
    print(READY.format(name) + str(sock.getsockname()[1]), flush=True)
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
    if len(argv) != 2:
        sys.exit(__doc__)
    what, arg = argv[0], int(argv[1])
    if what == "worker":
        run_worker(arg)
    elif what == "tcp-worker":
        run_tcp_worker(arg)
    elif what == "front":
        run_front(what, _GrpcLeg(arg))
    elif what == "tcp-front":
        run_front(what, _TcpLeg(arg))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
