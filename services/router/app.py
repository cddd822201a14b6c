"""The router's HTTP edge: an OpenAI-compatible API in front of a `Backend`.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   POST /tokenize
    GET /health (always 200)   GET /ready (503 while draining: drain.py; both need no key)
    GET /metrics (needs a key where keys are set, unless --public-metrics)

A request is validated (protocol.py), tokenized once (prompts.py), run through the backend
as token ids (generation.py) and shaped into OpenAI's JSON or server-sent events
(openai_format.py, sse.py). Every failure is an OpenAI error body (errors.py).
"""

from __future__ import annotations

import importlib.metadata
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from engine.detokenize import DecodeStreamDecoder, IncrementalText
from engine.tokenizer import Tokenizer
from services.router.api_keys import ApiKeys
from services.router.backend import Backend, GenerateRequest
from services.router.disconnect import DisconnectWatch
from services.router.drain import Drain
from services.router.errors import SERVER_ERROR, APIError, error_body, install_error_handlers
from services.router.generation import Generation, collect
from services.router.generation_config import with_defaults
from services.router.metrics import RouterMetrics
from services.router.middleware import (
    DEFAULT_MAX_BODY_BYTES,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ErrorCountMiddleware,
)
from services.router.openai_format import (
    ChatFormat,
    CompletionFormat,
    FastJSONResponse,
    Format,
    Logprobs,
    Meta,
)
from services.router.openapi_doc import served_openapi
from services.router.prompts import chat_prompt_ids, completion_prompt_ids
from services.router.protocol import ChatCompletionRequest, CompletionRequest
from services.router.sampling import resolve_max_tokens, sampling_params
from services.router.sse import EventStreamResponse, sse_events
from services.router.tokenize_route import tokenize_routes

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_VERSION = importlib.metadata.version("tandem")  # GET /version (vLLM's endpoint)
# nginx's status for "the client closed the connection": nobody reads it, logs do.
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class _Server:
    backend: Backend
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int
    metrics: RouterMetrics
    started: int  # unix seconds, the model's `created`
    drain: Drain  # /ready fails while it is active
    aliases: tuple[str, ...] = ()  # more names it answers to (vLLM's --served-model-name)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # generation_config.py

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.aliases)

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            served = "', '".join(self.model_names)
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{served}'.",
                param="model",
                code="model_not_found",
            )


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
) -> FastAPI:
    """`drain`: the router's SIGTERM state (drain.py); /ready fails while it is active.
    With API keys, every path needs one but the probes' (/health, /ready: a Kubernetes
    probe sends no key, and they tell only up or not) and, with `public_metrics`,
    /metrics. `aliases`: more names the model is served under (responses name the first);
    `allowed_origins`: browsers' origins answered with CORS headers (none: no CORS);
    `generation_defaults`: sampling values for what a request leaves out
    (generation_config.py)."""
    started = int(time.time())
    server = _Server(
        backend,
        tokenizer,
        model_name,
        max_model_len,
        metrics,
        started,
        drain or Drain(),
        tuple(aliases),
        dict(generation_defaults or {}),
    )
    app = FastAPI(title="Tandem router", summary="OpenAI-compatible API")
    fastapi_openapi = app.openapi  # what the API accepts, with the served bounds filled in
    app.openapi = lambda: served_openapi(  # type: ignore[method-assign]
        fastapi_openapi(), tokenizer.vocab_size
    )
    install_error_handlers(app)
    # Outermost first: error counting, the key, the body's size (added in reverse).
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_keys is not None and api_keys.keys:
        open_paths = {"/health", "/ready"} | ({"/metrics"} if public_metrics else set())
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
    app.include_router(tokenize_routes(tokenizer, max_model_len, server.check_model))
    return app


def _openai_routes(s: _Server) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        arrival = time.monotonic()
        s.check_model(body.model)
        body.check_supported()
        body = with_defaults(body, s.defaults)
        ids = await chat_prompt_ids(s.tokenizer, body)
        return await _complete(s, request, body, ids, "chatcmpl", arrival)

    @r.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        arrival = time.monotonic()
        s.check_model(body.model)
        body.check_supported()
        body = with_defaults(body, s.defaults)
        ids = await completion_prompt_ids(s.tokenizer, body)
        return await _complete(s, request, body, ids, "cmpl", arrival)

    @r.get("/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [_model_card(s, n) for n in s.model_names]})

    @r.get("/models/{model:path}")
    async def model(model: str) -> JSONResponse:
        s.check_model(model)
        return JSONResponse(_model_card(s, model))

    return r


def _model_card(s: _Server, name: str) -> dict[str, object]:
    return {
        "id": name,
        "object": "model",
        "created": s.started,
        "owned_by": "tandem",
        "max_model_len": s.max_model_len,
    }


async def _complete(
    s: _Server,
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    prompt_ids: list[int],
    id_prefix: str,
    arrival: float,
) -> Response:
    max_tokens = resolve_max_tokens(body, len(prompt_ids), s.max_model_len)
    params = sampling_params(body, max_tokens, s.tokenizer.vocab_size)
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    gen_request = GenerateRequest(request_id, prompt_ids, params, body.cache_salt or "")
    decoder = DecodeStreamDecoder(s.tokenizer.backend, body.skip_special_tokens)
    text = IncrementalText(decoder, params.stop, body.include_stop_str_in_output)
    gen = Generation(s.backend, gen_request, text, s.metrics, arrival)
    chat = isinstance(body, ChatCompletionRequest)
    meta = Meta(request_id, int(time.time()), s.model_name)
    fmt: Format = (ChatFormat if chat else CompletionFormat)(meta, body.include_usage)
    logprobs = Logprobs(s.tokenizer, chat, params.top_logprobs) if params.logprobs else None
    pieces = gen.pieces()
    watch = DisconnectWatch(request.receive)
    handed_over = False  # to the stream's response, which closes the watch
    try:
        if body.stream:
            # Wait for the first token before answering 200, so that a request the backend
            # cannot serve at all still gets a plain HTTP error status.
            first = await watch.until_gone(anext(pieces))
            if first is None:
                return Response(status_code=CLIENT_CLOSED)
            usage = gen.usage if body.include_usage else None
            events = sse_events(fmt, first, pieces, logprobs, usage, s.metrics)
            response = EventStreamResponse(events, watch)
            handed_over = True
            return response
        answer = await watch.until_gone(collect(pieces))
    finally:
        if not handed_over:
            watch.close()
    if answer is None:
        return Response(status_code=CLIENT_CLOSED)
    lp = logprobs.body(answer.token_ids, answer.logprobs, answer.top_logprobs) if logprobs else None
    return FastJSONResponse(fmt.response(answer.text, answer.finish_reason, lp, gen.usage))


def _ops_routes(s: _Server) -> APIRouter:
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

    @r.get("/metrics")
    async def metrics() -> Response:
        return Response(s.metrics.render(), media_type=PROMETHEUS_TEXT)

    return r
