"""The token stream's worker side: Prefill and Decode calls over one plain TCP (or TLS)
connection per router, beside the gRPC server, because grpc.aio costs ~0.1 ms of Python per
message on each side, more than the rest of a request's path (`make bench-router` measures
both).

    router --hello (cluster token)------------------> checked, or "unauthenticated" and closed
           --decode(DecodeRequest a)----------------> task a: calls.decode() ...
           --decode(DecodeRequest b)----------------> task b
           --prefill(PrefillRequest c)--------------> task c: calls.prefill()
           <--chunk a, chunk b, chunk a (one write per loop pass)--
           <--end a "ok" | end b "invalid_argument", details--
           <--prefill c (PrefillResponse) | end c "resource_exhausted", details--
           --cancel b-------------------------------> task b cancelled: the worker aborts b

A call ends as its rpc would (status.py's codes, by name); a connection that closes
cancels its calls, as a cancelled rpc does. Frames: services/cluster/frames.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
from collections.abc import Coroutine
from typing import Any

from services.cluster import frames
from services.cluster.worker_tls import ServerTls
from services.wire import stream
from services.worker.handlers import WorkerCalls
from services.worker.status import KNOWN, code_of

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 10.0


class TokenStreamServer:
    def __init__(self, calls: WorkerCalls, token: str | None, tls: ServerTls | None) -> None:
        self.calls = calls
        self._token = token.encode() if token else None
        self._ssl = frames.server_context(tls) if tls is not None else None
        self._calls: set[asyncio.Task[None]] = set()  # every connection's, for stop()
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listens; returns the port (a free one for 0)."""
        self._server = await asyncio.start_server(self._connection, host, port, ssl=self._ssl)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """No new connections; calls in flight get `grace_s` to end, then are cancelled."""
        self._server.close()
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=grace_s)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        frames.tune(writer)
        out = frames.FrameWriter(writer)
        running: dict[str, asyncio.Task[None]] = {}
        try:
            if await self._welcome(reader, out):
                await self._serve(reader, out, running)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the router went away: its calls are cancelled below
        except ValueError as e:  # FrameError, or bytes that are no StreamUp
            log.warning("token stream from %s closed: %s", _peer(writer), e)
        finally:
            for call in running.values():
                call.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            await out.close()
            self._connections.discard(task)

    async def _welcome(self, reader: asyncio.StreamReader, out: frames.FrameWriter) -> bool:
        """The first frame must be a hello with the cluster token (when there is one)."""
        first = stream.up_from_bytes(
            await asyncio.wait_for(frames.read_frame(reader), HELLO_TIMEOUT_S)
        )
        if not isinstance(first, stream.Hello):
            raise ValueError("the first frame is not a hello")
        if self._token is None or hmac.compare_digest(first.token.encode(), self._token):
            return True
        out.send(stream.end_frame("", "unauthenticated", "a valid cluster token is required"))
        return False

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        out: frames.FrameWriter,
        running: dict[str, asyncio.Task[None]],
    ) -> None:
        while True:
            msg = stream.up_from_bytes(await frames.read_frame(reader))
            if isinstance(msg, stream.Cancel):
                call = running.get(msg.request_id)
                if call is not None:
                    call.cancel()
            elif isinstance(msg, stream.Hello):
                raise ValueError("a second hello")
            elif msg.request_id in running:  # its replies could not be told apart
                details = f"request id {msg.request_id!r} is already in use"
                out.send(stream.end_frame(msg.request_id, "invalid_argument", details))
            else:
                if isinstance(msg, stream.Open):
                    body = self._decode(msg, out)
                else:
                    body = self._prefill(msg)
                call = asyncio.create_task(self._run(msg.request_id, body, out))
                running[msg.request_id] = call
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
                call.add_done_callback(functools.partial(_forget, running, msg.request_id))

    async def _decode(self, msg: stream.Open, out: frames.FrameWriter) -> bytes:
        updates = await self.calls.decode(msg.call())
        async with contextlib.aclosing(updates):
            async for update in updates:
                out.send(stream.chunk_frame(msg.request_id, update))
                await out.drain()
        return stream.end_frame(msg.request_id)

    async def _prefill(self, msg: stream.OpenPrefill) -> bytes:
        return stream.prefilled_frame(msg.request_id, await self.calls.prefill(msg.call()))

    async def _run(
        self, rid: str, body: Coroutine[Any, Any, bytes], out: frames.FrameWriter
    ) -> None:
        """Runs a call's `body`, which returns its last frame; failures end it as its rpc's
        status would."""
        try:
            last = await body
        except KNOWN as e:
            out.send(stream.end_frame(rid, code_of(e).name.lower(), str(e)))
        except asyncio.CancelledError:
            raise  # a cancel frame, or the connection's end: the router asked for nothing
        except ConnectionError:
            pass  # the connection's end, seen by the write first: nobody to tell
        except Exception as e:  # what gRPC would end as UNKNOWN
            log.exception("%s: the call failed", rid)
            out.send(stream.end_frame(rid, "unknown", f"{type(e).__name__}: {e}"))
        else:
            out.send(last)


def _forget(running: dict[str, asyncio.Task[None]], request_id: str, _: object) -> None:
    running.pop(request_id, None)


def _peer(writer: asyncio.StreamWriter) -> str:
    return str(writer.get_extra_info("peername"))
