"""Server-sent events for stream=true, as OpenAI sends them:

    data: {chunk}\\n\\n  ...  data: {usage chunk}\\n\\n (if asked)  data: [DONE]\\n\\n

A failure after the stream has started can no longer change the HTTP status, so it is sent
as one `data: {"error": {...}}` event, followed by [DONE] like any other end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.router.backend import BackendError
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


class EventStreamResponse(StreamingResponse):
    """Closes its event generator however the response ends. When the client disconnects,
    Starlette cancels the sending task but leaves the generator suspended; closing it here
    (not whenever the garbage collector gets to it) is what aborts the request at once."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]


class _Batcher:
    """Turns pieces into chunks. A piece with no text yet (held back by the IncrementalText)
    sends nothing; its tokens' logprobs wait for the next chunk that goes out."""

    def __init__(self, fmt: Format, logprobs: Logprobs | None) -> None:
        self._fmt, self._logprobs = fmt, logprobs
        self._ids: list[int] = []
        self._lps: list[float] = []

    def add(self, piece: Piece) -> bytes | None:
        self._ids += piece.token_ids
        self._lps += piece.logprobs
        if not piece.text and piece.finish_reason is None:
            return None
        lp = self._logprobs.body(self._ids, self._lps) if self._logprobs else None
        self._ids, self._lps = [], []
        return event(self._fmt.chunk(piece, lp))


async def sse_events(
    fmt: Format,
    first: Piece,
    rest: AsyncIterator[Piece],
    logprobs: Logprobs | None,
    usage: Usage | None,  # the usage chunk's source, when stream_options.include_usage
    metrics: RouterMetrics,
) -> AsyncIterator[bytes]:
    """`first` was taken from the pieces before the response started (so a failure before
    the first token is still a plain HTTP error); `rest` yields the others."""
    batcher = _Batcher(fmt, logprobs)
    try:
        if (start := fmt.first_chunk()) is not None:
            yield event(start)
        if (frame := batcher.add(first)) is not None:
            yield frame
        if first.finish_reason is None:
            async for piece in rest:
                if (frame := batcher.add(piece)) is not None:
                    yield frame
        if usage is not None:
            yield event(fmt.usage_chunk(usage))
    except Exception as e:
        yield _error_event(e, metrics)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield DONE


def _error_event(err: Exception, metrics: RouterMetrics) -> bytes:
    body: dict[str, Any]
    if isinstance(err, BackendError):
        status, body = err.status, error_body(err.message, err.type)
    else:
        log.exception("unexpected error while streaming")
        status, body = 500, error_body("The server had an error.", SERVER_ERROR)
    metrics.record_http_error(status)
    return event(body)
