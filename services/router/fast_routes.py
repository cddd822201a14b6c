"""The two generation endpoints answered in plain ASGI, in front of FastAPI's routing.

FastAPI's routing, dependency solving and exception layers cost the router more CPU per
request than its own body validation does (py-spy at 16 streams: ~15% of the event loop's
busy time), and every server-sent event passes back through their send wrappers. These
two paths are the whole traffic of a serving router, so they are answered here, inside
the router's own middleware (API keys, body limit, error counts) and with the same rules
FastAPI applies: the body is JSON only when its Content-Type says so, validated by the
same pydantic model with errors located under "body", and every failure is the same
OpenAI error body (errors.error_response_for). FastAPI keeps the routes for everything
else: the OpenAPI document lists them, and a request this class does not take (another
method, another path) goes on to FastAPI as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.router.errors import error_response_for

# (the validated body, the ASGI receive the request's disconnect is watched on, arrival)
Answer = Callable[[Any, Receive, float], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    body: type[BaseModel]
    answer: Answer


class FastRoutes:
    """POSTs to `routes`' paths answered by their `FastRoute`; anything else to `app`."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, FastRoute]) -> None:
        self.app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(scope["path"])
        if route is None:
            return await self.app(scope, receive, send)
        arrival = time.monotonic()
        try:
            raw = await _read_body(receive)
            if raw is None:
                return  # the client left before its body was whole: nobody to answer
            body = _validated(route.body, raw, _content_type(scope))
            response = await route.answer(body, receive, arrival)
        except Exception as e:
            response = await error_response_for(Request(scope), e)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return ""


def _is_json(content_type: str) -> bool:
    """FastAPI's rule: application/json or application/*+json, parameters aside."""
    kind, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return kind == "application" and (sub == "json" or sub.endswith("+json"))


def _validated(model: type[BaseModel], raw: bytes, content_type: str) -> Any:
    """`model` from the body, or FastAPI's RequestValidationError for the same input: an
    empty body is a missing one; a body not typed as JSON is validated as the bytes it is
    (and fails); JSON that does not parse is `json_invalid` at its error's offset."""
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    value: Any = raw
    if _is_json(content_type):
        try:
            value = json.loads(raw)
        except UnicodeDecodeError as e:  # FastAPI's answer to a body it cannot even read
            raise HTTPException(400, "There was an error parsing the body") from e
        except json.JSONDecodeError as e:
            ctx = {"error": e.msg}
            bad = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error"}
            raise RequestValidationError([{**bad, "input": {}, "ctx": ctx}]) from e
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        raise RequestValidationError([{**x, "loc": ("body", *x["loc"])} for x in errors]) from e
