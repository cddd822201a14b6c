"""The router's HTTP edge: an OpenAI-compatible API in front of a `Backend`.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   POST /tokenize
    GET /health (always 200)   GET /ready (503 while draining: drain.py; both need no key)
    GET /metrics (needs a key where keys are set, unless --public-metrics)
    GET /metrics/workers (the workers' own /metrics, for Prometheus' HTTP service discovery)

A request is validated (protocol.py), tokenized once (prompts.py), run through the backend
as token ids, one request per choice (complete.py, choices.py, generation.py), and shaped
into OpenAI's JSON or server-sent events (openai_format.py, sse.py). Every failure is an
OpenAI error body (errors.py).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import Receive

from engine.tokenizer import Tokenizer
from services.pb.events_pb2 import WorkerRecord
from services.router.api_keys import ApiKeys
from services.router.backend import Backend
from services.router.complete import Server, complete
from services.router.completion_body import CompletionRequest
from services.router.drain import Drain
from services.router.errors import SERVER_ERROR, error_body, install_error_handlers
from services.router.fast_routes import FastRoute, FastRoutes
from services.router.generation_config import with_defaults
from services.router.metrics import RouterMetrics
from services.router.metrics_routes import metrics_routes
from services.router.middleware import (
    DEFAULT_MAX_BODY_BYTES,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ErrorCountMiddleware,
)
from services.router.openapi_doc import served_openapi
from services.router.prompts import chat_prompt_ids, completion_prompt_ids
from services.router.protocol import ChatCompletionRequest
from services.router.reasoning import ReasoningSyntax
from services.router.tokenize_route import tokenize_routes

_VERSION = importlib.metadata.version("tandem")  # GET /version (vLLM's endpoint)


def create_app(
    backend: Backend,
    tokenizer: Tokenizer,
    model_name: str,
    max_model_len: int,
    metrics: RouterMetrics,
    api_keys: ApiKeys | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    drain: Drain | None = None,
    public_metrics: bool = False,
    aliases: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    generation_defaults: Mapping[str, Any] | None = None,
    reasoning: ReasoningSyntax | None = None,
    tool_parser: str | None = None,
    worker_targets: Callable[[], list[WorkerRecord]] | None = None,
) -> FastAPI:
    """`drain`: the router's SIGTERM state (drain.py); /ready fails while it is active.
    With API keys, every path needs one but the probes' (/health, /ready: a Kubernetes
    probe sends no key, and they tell only up or not) and, with `public_metrics`,
    /metrics. `aliases`: more names the model is served under (responses name the first);
    `allowed_origins`: browsers' origins answered with CORS headers (none: no CORS);
    `generation_defaults`: sampling values for what a request leaves out
    (generation_config.py); `reasoning`: the tags of the model's thinking, split from chat
    answers into `reasoning_content` (reasoning.py); `tool_parser`: how tool calls are
    read from the model's output for tool_choice auto (tool_parsers.py); `worker_targets`:
    the workers whose own /metrics GET /metrics/workers lists for Prometheus to scrape."""
    started = int(time.time())
    server = Server(
        backend,
        tokenizer,
        model_name,
        max_model_len,
        metrics,
        started,
        drain or Drain(),
        tuple(aliases),
        dict(generation_defaults or {}),
        reasoning,
        tool_parser,
    )
    app = FastAPI(title="Tandem router", summary="OpenAI-compatible API")
    fastapi_openapi = app.openapi  # what the API accepts, with the served bounds filled in
    app.openapi = lambda: served_openapi(  # type: ignore[method-assign]
        fastapi_openapi(), tokenizer.vocab_size
    )
    install_error_handlers(app)
    # Outermost first: error counting, the key, the body's size, the generation endpoints
    # (fast_routes.py; added in reverse).
    app.add_middleware(FastRoutes, routes=_fast_routes(server))
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_keys is not None and api_keys.keys:
        public = {"/metrics", "/metrics/workers"} if public_metrics else set()
        open_paths = {"/health", "/ready"} | public
        app.add_middleware(ApiKeyMiddleware, keys=api_keys, open_paths=frozenset(open_paths))
    app.add_middleware(ErrorCountMiddleware, metrics=metrics)  # sees 401s too
    if allowed_origins:  # outermost: a browser's preflight carries no API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(_openai_routes(server))
    app.include_router(_ops_routes(server))
    app.include_router(metrics_routes(metrics, worker_targets or list))
    app.include_router(tokenize_routes(tokenizer, max_model_len, server.check_model))
    return app


def _fast_routes(s: Server) -> dict[str, FastRoute]:
    return {
        "/v1/chat/completions": FastRoute(ChatCompletionRequest, partial(_generate, s)),
        "/v1/completions": FastRoute(CompletionRequest, partial(_generate, s)),
    }


async def _generate(
    s: Server, body: ChatCompletionRequest | CompletionRequest, receive: Receive, arrival: float
) -> Response:
    """Either endpoint: checked, defaults filled in, tokenized once, then `complete`."""
    s.check_model(body.model)
    body.check_supported()
    body = with_defaults(body, s.defaults)
    if isinstance(body, ChatCompletionRequest):
        prompts, prefix = [await chat_prompt_ids(s.tokenizer, body)], "chatcmpl"
    else:
        prompts, prefix = await completion_prompt_ids(s.tokenizer, body), "cmpl"
    return await complete(s, receive, body, prompts, prefix, arrival)


def _openai_routes(s: Server) -> APIRouter:
    r = APIRouter(prefix="/v1")

    # FastRoutes answers these two POSTs before FastAPI's routing sees them; here they
    # give the OpenAPI document, and would serve the same if FastRoutes were not there.
    @r.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _generate(s, body, request.receive, time.monotonic())

    @r.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _generate(s, body, request.receive, time.monotonic())

    @r.get("/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [_model_card(s, n) for n in s.model_names]})

    @r.get("/models/{model:path}")
    async def model(model: str) -> JSONResponse:
        s.check_model(model)
        return JSONResponse(_model_card(s, model))

    return r


def _model_card(s: Server, name: str) -> dict[str, object]:
    return {
        "id": name,
        "object": "model",
        "created": s.started,
        "owned_by": "tandem",
        "max_model_len": s.max_model_len,
    }


def _ops_routes(s: Server) -> APIRouter:
    r = APIRouter()

    @r.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": _VERSION})

    @r.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})  # the process answers; says nothing of workers

    @r.get("/ready")
    async def ready() -> JSONResponse:
        if s.drain.active:  # first: a draining router is never ready, whatever its workers
            body = error_body("The router is shutting down.", SERVER_ERROR, None, "draining")
            return JSONResponse(body, status_code=503)
        try:
            ok = await s.backend.ready()
        except Exception:  # a backend that cannot even say is not ready
            ok = False
        if ok:
            return JSONResponse({"status": "ready"})
        body = error_body("No worker can serve a request yet.", SERVER_ERROR, None, "not_ready")
        return JSONResponse(body, status_code=503)

    return r
