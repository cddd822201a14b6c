"""Server-sent events for stream=true, as OpenAI sends them:

    data: {chunk}\\n\\n  ...  data: {usage chunk}\\n\\n (if asked)  data: [DONE]\\n\\n

A failure after the stream has started can no longer change the HTTP status, so it is sent
as one `data: {"error": {...}}` event, followed by [DONE] like any other end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine.request import TopLogprobs
from services.router.backend import BackendError
from services.router.disconnect import DisconnectWatch
from services.router.errors import SERVER_ERROR, error_body
from services.router.generation import Piece, Usage
from services.router.metrics import RouterMetrics
from services.router.openai_format import Format, Json, Logprobs

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(obj: Json) -> bytes:
    """Compact UTF-8 JSON (as json.dumps with ensure_ascii=False and no spaces would write
    it; a NaN or infinity becomes null, where json.dumps would write invalid JSON)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class EventStreamResponse(Response):
    """A response of server-sent events, streamed by the request's own task under the
    request's DisconnectWatch (which it closes): a client that leaves cancels the stream,
    and the event generator is closed here (not whenever the garbage collector gets to
    it), which is what aborts the request at once. The frame that holds [DONE] goes out
    with the end of the body: one write, not two. (Starlette's StreamingResponse runs an
    anyio task group of two more tasks per response, and ends the body with a write of
    its own.)"""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], watch: DisconnectWatch) -> None:
        # Response.__init__ would add `content-length: 0` for its empty body.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events, self._watch = events, watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._watch.until_gone(self._stream(send))
        finally:
            self._watch.close()
            await self._events.aclose()  # type: ignore[attr-defined]

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for frame in self._events:
            last = frame.endswith(DONE)
            await send({"type": "http.response.body", "body": frame, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Batcher:
    """Turns one choice's pieces into chunks. A piece with no text yet (held back by the
    IncrementalText, or by the reasoning parser) sends nothing; its tokens' logprobs wait
    for the next chunk that goes out."""

    def __init__(self, fmt: Format, index: int, logprobs: Logprobs | None) -> None:
        self._fmt, self._index, self._logprobs = fmt, index, logprobs
        self._ids: list[int] = []
        self._lps: list[float | None] = []
        self._tops: list[TopLogprobs | None] = []

    def add(self, piece: Piece) -> bytes | None:
        self._ids += piece.token_ids
        self._lps += piece.logprobs
        self._tops += piece.top_logprobs
        if not (piece.text or piece.reasoning or piece.tool_calls or piece.finish_reason):
            return None
        lp = self._logprobs.body(self._ids, self._lps, self._tops) if self._logprobs else None
        self._ids, self._lps, self._tops = [], [], []
        return event(self._fmt.chunk(self._index, piece, lp))


async def sse_events(
    fmt: Format,
    first: tuple[int, Piece],
    rest: AsyncIterator[tuple[int, Piece]],
    logprobs: Sequence[Logprobs | None],  # one per choice
    usage: Callable[[], Usage] | None,  # the usage chunk's source, with include_usage
    metrics: RouterMetrics,
) -> AsyncIterator[bytes]:
    """`first` (a choice's index and piece) was taken before the response started (so a
    failure before the first token is still a plain HTTP error); `rest` yields the others,
    of every choice, until each has finished."""
    batchers = [_Batcher(fmt, i, lp) for i, lp in enumerate(logprobs)]
    unfinished = len(batchers)
    tail = b""  # the last choice's last frame and the usage chunk go out with [DONE]
    try:
        for i in range(len(batchers)):
            if (start := fmt.first_chunk(i)) is not None:
                yield event(start)
        item: tuple[int, Piece] | None = first
        while item is not None:
            index, piece = item
            frame = batchers[index].add(piece)
            if piece.finish_reason is not None:
                unfinished -= 1
            if unfinished == 0:
                tail = frame or b""
                break
            if frame is not None:
                yield frame
            item = await anext(rest, None)
        if usage is not None:
            tail += event(fmt.usage_chunk(usage()))
    except Exception as e:
        tail += _error_event(e, metrics)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield tail + DONE


def _error_event(err: Exception, metrics: RouterMetrics) -> bytes:
    body: dict[str, Any]
    if isinstance(err, BackendError):
        status, body = err.status, error_body(err.message, err.type)
    else:
        log.exception("unexpected error while streaming")
        status, body = 500, error_body("The server had an error.", SERVER_ERROR)
    metrics.record_http_error(status)
    return event(body)
