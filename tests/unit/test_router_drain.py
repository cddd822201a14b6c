"""The router's drain (services/router/drain.py) without processes or signals: the handler
uvicorn installs is called as a signal would call it, and the server's tick is driven by
hand. SIGTERM fails /ready at once and closes the listener only after the delay; Ctrl-C,
or a second SIGTERM, stops accepting at once."""

from __future__ import annotations

import asyncio
import signal

import httpx
import uvicorn

from services.router.app import create_app
from services.router.drain import Drain, DrainingServer
from services.router.metrics import RouterMetrics
from tests.unit.test_router_app import MODEL, TOKENIZER, ScriptedBackend, _deltas


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    raise AssertionError("never called")


def _server(delay_s: float) -> DrainingServer:
    return DrainingServer(uvicorn.Config(_app, log_level="warning"), Drain(), delay_s)


def _tick(server: DrainingServer, counter: int = 1) -> bool:
    return asyncio.run(server.on_tick(counter))


def test_sigterm_fails_ready_at_once_and_stops_accepting_after_the_delay() -> None:
    server = _server(delay_s=0.2)
    server.handle_exit(signal.SIGTERM, None)
    assert server.drain.active and not server.should_exit
    assert (b"connection", b"close") in server.server_state.default_headers
    assert not _tick(server)  # still serving
    assert (b"connection", b"close") in server.server_state.default_headers
    asyncio.run(asyncio.sleep(0.25))
    assert _tick(server, counter=10)  # the delay is over: uvicorn's shutdown begins
    assert (b"connection", b"close") in server.server_state.default_headers  # renewed, kept


def test_a_second_sigterm_or_ctrl_c_ends_the_delay() -> None:
    for second in (signal.SIGTERM, signal.SIGINT):
        server = _server(delay_s=60.0)
        server.handle_exit(signal.SIGTERM, None)
        assert not _tick(server)
        server.handle_exit(second, None)
        assert server.should_exit and not server.force_exit and _tick(server)


def test_ctrl_c_stops_accepting_at_once_and_a_zero_delay_too() -> None:
    for sig, delay_s in ((signal.SIGINT, 5.0), (signal.SIGTERM, 0.0)):
        server = _server(delay_s)
        server.handle_exit(sig, None)
        assert server.should_exit and server.drain.active


def test_ready_fails_while_draining_and_requests_are_still_served() -> None:
    async def run() -> tuple[httpx.Response, httpx.Response]:
        drain = Drain()
        backend = ScriptedBackend(_deltas("ok"))
        app = create_app(backend, TOKENIZER, MODEL, 256, RouterMetrics(MODEL), drain=drain)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            assert (await http.get("/ready")).status_code == 200
            drain.begin()
            body = {"model": MODEL, "prompt": "x"}
            return await http.get("/ready"), await http.post("/v1/completions", json=body)

    ready, served = asyncio.run(run())
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
    assert served.status_code == 200 and served.json()["choices"][0]["text"] == "ok"
