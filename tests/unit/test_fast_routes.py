"""The generation endpoints answered in plain ASGI (services/router/fast_routes.py) answer
every input exactly as FastAPI's routes for the same paths do: the same status, the same
OpenAI error body, the same counted errors. Each input is sent to the router as built and
to the same router with FastRoutes taken out of its middleware (FastAPI then serves it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from services.router.app import create_app
from services.router.fast_routes import FastRoutes
from services.router.metrics import RouterMetrics
from tests.unit.test_router_app import MODEL, TOKENIZER, ScriptedBackend, _deltas

JSON = {"content-type": "application/json"}
GOOD = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()

INPUTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("a good body", GOOD, JSON),
    ("a good streamed body", GOOD[:-1] + b', "stream": true}', JSON),
    ("a JSON subtype", GOOD, {"content-type": "application/vnd.api+json; charset=utf-8"}),
    ("an empty body", b"", JSON),
    ("no content type", GOOD, {}),
    ("a form's content type", GOOD, {"content-type": "application/x-www-form-urlencoded"}),
    ("text/json", GOOD, {"content-type": "text/json"}),
    ("JSON that does not parse", b'{"model": ', JSON),
    ("bytes that are not UTF-8", b'{"model": "\xff\xfe"}', JSON),
    ("a list, not an object", b"[1, 2]", JSON),
    ("a missing field", json.dumps({"model": MODEL}).encode(), JSON),
    ("a value out of range", GOOD[:-1] + b', "temperature": -1}', JSON),
    ("another model", GOOD.replace(MODEL.encode(), b"other"), JSON),
]


def _without_fast_routes(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastRoutes]
    app.middleware_stack = None  # rebuilt on the next request
    return app


async def _answer(fast: bool, path: str, body: bytes, headers: dict[str, str]) -> tuple:
    metrics = RouterMetrics(MODEL)
    app = create_app(ScriptedBackend(_deltas("ok")), TOKENIZER, MODEL, 256, metrics)
    if not fast:
        app = _without_fast_routes(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        r = await http.post(path, content=body, headers=headers)
    errors = {s: metrics.http_errors.labels(status=s)._value.get() for s in ("400", "404")}
    text = r.text if r.status_code >= 400 else _without_ids(r.text)
    return r.status_code, r.headers.get("content-type"), text, errors


def _without_ids(text: str) -> str:
    """A success's body less what differs between two runs (ids, times)."""
    out = []
    for frame in text.removeprefix("data: ").split("\n\ndata: "):
        try:
            obj = json.loads(frame)
        except json.JSONDecodeError:
            out.append(frame)
            continue
        out.append({k: v for k, v in obj.items() if k not in ("id", "created")})
    return repr(out)


def _cases() -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    for name, body, headers in INPUTS:
        yield name, "/v1/completions", body, headers
    chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    yield "a good chat body", "/v1/chat/completions", chat.encode(), JSON
    yield "a chat body without messages", "/v1/chat/completions", GOOD, JSON


@pytest.mark.parametrize(("name", "path", "body", "headers"), list(_cases()))
def test_the_fast_path_answers_as_fastapi_does(
    name: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast = asyncio.run(_answer(True, path, body, headers))
    routed = asyncio.run(_answer(False, path, body, headers))
    assert fast == routed, name


def test_fastapi_still_answers_other_methods_on_the_same_paths() -> None:
    async def get() -> httpx.Response:
        app = create_app(ScriptedBackend([]), TOKENIZER, MODEL, 256, RouterMetrics(MODEL))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            return await http.get("/v1/completions")

    r = asyncio.run(get())
    assert r.status_code == 405 and r.json()["error"]["message"].startswith("Method not allowed")
