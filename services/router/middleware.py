"""Two checks around every request, written as plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: the latter runs the endpoint in
another task, which gets in the way of streaming responses and of cancelling a request
when its client goes away.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.router.errors import error_body
from services.router.metrics import RouterMetrics


class ApiKeyMiddleware:
    """Every path but `open_paths` needs `Authorization: Bearer <key>`. It runs before the
    body is read, so a caller without the key learns nothing about what it sent."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            return await self.app(scope, receive, send)
        given = _bearer(scope)
        if given is not None and hmac.compare_digest(given, self._key):  # constant time
            return await self.app(scope, receive, send)
        message = (
            "Incorrect API key provided."
            if given is not None
            else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
        body = json.dumps(error_body(message, "invalid_request_error", None, "invalid_api_key"))
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


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
