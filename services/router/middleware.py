"""Checks around every request, written as plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: the latter runs the endpoint in
another task, which gets in the way of streaming responses and of cancelling a request
when its client goes away.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.router.admission import RETRY_AFTER_S
from services.router.api_keys import ApiKeys
from services.router.errors import INVALID_REQUEST, error_body
from services.router.metrics import RouterMetrics

# As TGI's --payload-limit: a prompt filling a 128k-token context, as text or as token ids,
# fits well inside it; nothing this API accepts is larger.
DEFAULT_MAX_BODY_BYTES = 2_000_000


class ApiKeyMiddleware:
    """Every path but `open_paths` needs `Authorization: Bearer <key>`, one of `keys`. It
    runs before the body is read, so a caller without a key learns nothing about what it
    sent. With a per-key limit, each POST holds one of its key's places until its response
    has been sent whole (a stream to its last event); one over the limit gets 429."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str]) -> None:
        self.app = app
        self._keys = keys
        self._open = open_paths
        self._in_flight = [0] * len(keys.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            return await self.app(scope, receive, send)
        given = _bearer(scope)
        index = self._keys.match(given) if given is not None else None
        if index is None:
            return await _send_json(
                send, 401, _key_error(given), [(b"www-authenticate", b"Bearer")]
            )
        limit = self._keys.max_requests_per_key
        if limit is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self._in_flight[index] >= limit:
            message = f"This API key already has {limit} requests in progress, its limit."
            body = error_body(message, "requests", None, "rate_limit_exceeded")
            return await _send_json(
                send, 429, body, [(b"retry-after", str(RETRY_AFTER_S).encode())]
            )
        self._in_flight[index] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight[index] -= 1


def _key_error(given: bytes | None) -> dict[str, Any]:
    message = (
        "Incorrect API key provided."
        if given is not None
        else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
    )
    return error_body(message, INVALID_REQUEST, None, "invalid_api_key")


class BodyLimitMiddleware:
    """Refuses a body over `max_bytes` with 413 before anything parses it: at once when its
    Content-Length says so, as soon as it passes the limit when it comes in chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None:  # the HTTP parser reads exactly that many bytes, no more
            if declared <= self._max:
                return await self.app(scope, receive, send)
            return await _send_json(send, 413, error_body(self._message(), INVALID_REQUEST))
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._max:
                # FastAPI lets an HTTPException out of its body reading unchanged; the
                # router's handler turns it into OpenAI's error body.
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"The request body is larger than this server's limit of {self._max} bytes."


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the HTTP parser has refused it already
    return None


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class ErrorCountMiddleware:
    """Counts every error status the router sends (`tandem_http_errors_total`), whichever
    layer produced it: validation, auth, routing, or an exception nobody expected."""

    def __init__(self, app: ASGIApp, metrics: RouterMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    self._metrics.record_http_error(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:  # the outer error middleware turns this into a 500
                self._metrics.record_http_error(500)
            raise
