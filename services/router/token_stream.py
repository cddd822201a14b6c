"""The token stream's router side: this router's Prefill and Decode calls to one worker, all
on one connection (services/worker/token_stream.py is the other end; why it exists is there).

    decode(call) --open--> [connection: one reader task] --frames by request id--> each
    call's queue --> DecodeReply, DecodeReply, ..., then the end: "ok" returns, any other
    code raises WorkerError(code, details), as the Decode rpc's status would
    prefill(call, timeout_s) --> its queue --> PrefillReply, or an end that raises

A call closed early, or a prefill past its timeout, sends a cancel (the worker aborts the
request, as for a cancelled rpc).
A connection that fails ends every call on it with WorkerError("unavailable") (so the
router resumes them elsewhere, as when a gRPC stream breaks); the next call dials again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncGenerator

from services.cluster import frames
from services.router.worker_error import WorkerError
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply, stream

CONNECT_TIMEOUT_S = 5.0
_Item = DecodeReply | stream.Prefilled | stream.StreamEnd | WorkerError


class _Connection:
    def __init__(self, address: str, reader: asyncio.StreamReader, out: frames.FrameWriter) -> None:
        self.address = address
        self.out = out
        self.calls: dict[str, asyncio.Queue[_Item]] = {}
        self.error: WorkerError | None = None  # set once it has failed: it takes no call
        self._reader = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error = WorkerError("unavailable", f"the token stream to {self.address} closed")
        try:
            while True:
                request_id, item = stream.down_from_bytes(await frames.read_frame(reader))
                if not request_id:  # the connection's own end: a refusal
                    if not isinstance(item, stream.StreamEnd):
                        raise ValueError("a frame for no call that is no end")
                    error = WorkerError(item.code, item.details)
                    return
                queue = self.calls.get(request_id)
                if queue is not None:  # else a call closed already: its late frames
                    queue.put_nowait(item)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            error = WorkerError("unavailable", f"the token stream to {self.address}: {e!r}")
        except ValueError as e:  # FrameError, or bytes that are no StreamDown
            error = WorkerError("internal", f"the token stream to {self.address}: {e}")
        finally:
            self.fail(error)

    def fail(self, error: WorkerError) -> None:
        """Ends every call on it with `error`, and closes it."""
        if self.error is None:
            self.error = error
        for queue in self.calls.values():
            queue.put_nowait(self.error)
        self.out.writer.close()

    async def close(self) -> None:
        self.fail(WorkerError("closed", f"the token stream to {self.address} was closed"))
        await self.out.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class TokenStream:
    """This router's connection to one worker's token stream, dialled on first use."""

    def __init__(self, address: str, token: str | None, ca: bytes | None) -> None:
        self.address = address
        self._token = token
        self._ssl = frames.client_context(ca) if ca is not None else None
        self._conn: _Connection | None = None
        self._dialling: asyncio.Lock | None = None  # made on the loop that uses it
        self._closed = False

    async def decode(self, call: DecodeCall) -> AsyncGenerator[DecodeReply, None]:
        """The worker's stream of `call`. Close it early (`contextlib.aclosing`) and the
        worker aborts the request."""
        rid = call.request_id
        conn, answers = await self._open(rid, stream.decode_frame(call))
        ended = False
        try:
            while True:
                item = await answers.get()
                if isinstance(item, DecodeReply):
                    # the last chunk: the worker is done with it (its end, "ok", follows);
                    # a caller that stops here has nothing to cancel
                    ended = item.finished
                    yield item
                    continue
                ended = True
                if isinstance(item, stream.StreamEnd) and item.code == stream.OK:
                    return
                raise _failure(item)
        finally:
            self._close(conn, rid, ended)

    async def prefill(self, call: PrefillCall, timeout_s: float) -> PrefillReply:
        called_at = time.monotonic()
        rid = call.request_id
        ended = False
        try:
            async with asyncio.timeout(timeout_s):
                conn, answers = await self._open(rid, stream.prefill_frame(call))
                try:
                    item = await answers.get()
                    ended = True
                finally:
                    self._close(conn, rid, ended)
        except TimeoutError:  # as gRPC's deadline ends the rpc
            raise WorkerError("deadline_exceeded", f"no answer in {timeout_s:.3g} s") from None
        if isinstance(item, stream.Prefilled):
            return item.reply(called_at)
        raise _failure(item)

    async def _open(self, rid: str, opening: bytes) -> tuple[_Connection, asyncio.Queue[_Item]]:
        """Sends `opening`, a call named `rid`; its answers arrive on the queue."""
        conn = await self._connection()
        if rid in conn.calls:  # its frames could not be told apart from the other call's
            raise WorkerError("invalid_argument", f"request id {rid!r} is already in use")
        answers: asyncio.Queue[_Item] = asyncio.Queue()
        conn.calls[rid] = answers
        conn.out.send(opening)
        return conn, answers

    def _close(self, conn: _Connection, rid: str, ended: bool) -> None:
        """A call left before its end is cancelled on the worker (which aborts it)."""
        del conn.calls[rid]
        if not ended and conn.error is None:
            conn.out.send(stream.cancel_frame(rid))

    async def _connection(self) -> _Connection:
        if self._closed:
            raise WorkerError("closed", f"the token stream to {self.address} was closed")
        if self._conn is not None and self._conn.error is None:
            return self._conn
        if self._dialling is None:
            self._dialling = asyncio.Lock()
        async with self._dialling:  # calls that arrive meanwhile share the one connection
            if self._conn is None or self._conn.error is not None:
                self._conn = await self._dial()
            return self._conn

    async def _dial(self) -> _Connection:
        host, _, port = self.address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, int(port), ssl=self._ssl, server_hostname=host if self._ssl else None
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise WorkerError("unavailable", f"the token stream to {self.address}: {e!r}") from None
        frames.tune(writer)
        out = frames.FrameWriter(writer)
        out.send(stream.hello_frame(self._token))
        return _Connection(self.address, reader, out)

    async def close(self, grace_s: float | None = None) -> None:
        """No new calls; with a grace period, calls in flight may finish first."""
        self._closed = True
        conn = self._conn
        if conn is None:
            return
        if grace_s:
            deadline = asyncio.get_running_loop().time() + grace_s
            while conn.calls and conn.error is None:
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.05)
        await conn.close()


def _failure(item: _Item) -> WorkerError:
    """What a call's answer that is not the one it waits for means."""
    if isinstance(item, WorkerError):
        return item
    if isinstance(item, stream.StreamEnd) and item.code != stream.OK:
        return WorkerError(item.code, item.details)
    return WorkerError("internal", f"an answer of the wrong kind: {type(item).__name__}")
