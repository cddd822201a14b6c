"""One completion request answered: its choices built (choices.py) and run through the
backend, and their pieces shaped into OpenAI's JSON or server-sent events (openai_format.py,
sse.py). `Server` is what the router's HTTP edge serves with (app.py builds it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import Response
from starlette.types import Receive

from engine.detokenize import DecodeStreamDecoder, IncrementalText
from engine.tokenizer import Tokenizer
from services.router.backend import Backend, GenerateRequest
from services.router.choices import Choice, kth_params, merged, total_usage
from services.router.completion_body import CompletionRequest
from services.router.disconnect import DisconnectWatch
from services.router.drain import Drain
from services.router.echo import echoed
from services.router.errors import APIError
from services.router.generation import Generation, Piece, collect
from services.router.metrics import RouterMetrics
from services.router.openai_format import (
    ChatFormat,
    CompletionFormat,
    FastJSONResponse,
    Format,
    Logprobs,
    Meta,
)
from services.router.protocol import ChatCompletionRequest
from services.router.reasoning import ReasoningSyntax, grammar_after_thinking, split_reasoning
from services.router.sampling import resolve_max_tokens, sampling_params
from services.router.sse import EventStreamResponse, sse_events
from services.router.tools import ParserFactory, extract_tool_calls, tool_parsers

# nginx's status for "the client closed the connection": nobody reads it, logs do.
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class Server:
    backend: Backend
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int
    metrics: RouterMetrics
    started: int  # unix seconds, the model's `created`
    drain: Drain  # /ready fails while it is active
    aliases: tuple[str, ...] = ()  # more names it answers to (vLLM's --served-model-name)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # generation_config.py
    reasoning: ReasoningSyntax | None = None  # chat answers' thinking split off (reasoning.py)
    tool_parser: str | None = None  # tool_choice auto's reader (tool_parsers.py)

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


async def complete(
    s: Server,
    receive: Receive,  # the request's: its disconnect cancels the work
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    id_prefix: str,
    arrival: float,
) -> Response:
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    chat = isinstance(body, ChatCompletionRequest)
    thinking = s.reasoning if chat else None
    choices = _choices(s, body, prompts, request_id, arrival, thinking)
    meta = Meta(request_id, int(time.time()), s.model_name)
    shown = {"include_usage": body.include_usage, "include_timing": body.include_timing}
    fmt: Format = (
        ChatFormat(meta, **shown, reasoning=thinking is not None)
        if chat
        else CompletionFormat(meta, **shown)
    )
    items = merged(choices, body.n)
    watch = DisconnectWatch(receive)
    handed_over = False  # to the stream's response, which closes the watch
    try:
        if body.stream:
            # Wait for the first token before answering 200, so that a request the backend
            # cannot serve at all still gets a plain HTTP error status.
            first = await watch.until_gone(anext(items))
            if first is None:
                return Response(status_code=CLIENT_CLOSED)
            usage = partial(total_usage, choices, body.n) if body.include_usage else None
            logprobs = [c.logprobs for c in choices]
            events = sse_events(fmt, first, items, logprobs, usage, s.metrics)
            response = EventStreamResponse(events, watch)
            handed_over = True
            return response
        answers = await watch.until_gone(collect(items, len(choices)))
    finally:
        if not handed_over:
            watch.close()
    if answers is None:
        return Response(status_code=CLIENT_CLOSED)
    bodies = [
        (a, c.logprobs.body(a.token_ids, a.logprobs, a.top_logprobs) if c.logprobs else None)
        for a, c in zip(answers, choices, strict=True)
    ]
    return FastJSONResponse(fmt.response(bodies, total_usage(choices, body.n)))


def _choices(
    s: Server,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    request_id: str,
    arrival: float,
    thinking: ReasoningSyntax | None,
) -> list[Choice]:
    """`body.n` choices of each prompt, in choices.py's order, none started yet."""
    chat = isinstance(body, ChatCompletionRequest)
    calls = tool_parsers(body, s.tool_parser) if isinstance(body, ChatCompletionRequest) else None
    shown = body.prompts() if isinstance(body, CompletionRequest) and body.echo else None
    thinking_ends = s.tokenizer.encode(thinking.end) if thinking is not None else []
    several = len(prompts) * body.n > 1
    out: list[Choice] = []
    for p, prompt_ids in enumerate(prompts):
        max_tokens = resolve_max_tokens(body, len(prompt_ids), s.max_model_len)
        params = sampling_params(body, max_tokens, s.tokenizer.vocab_size)
        if thinking is not None:
            params = grammar_after_thinking(thinking, params, thinking_ends)
        for k in range(body.n):
            index = p * body.n + k
            rid = f"{request_id}-{index}" if several else request_id
            salt = body.cache_salt or ""
            gen_request = GenerateRequest(rid, prompt_ids, kth_params(params, k), salt)
            decoder = DecodeStreamDecoder(s.tokenizer.backend, body.skip_special_tokens)
            text = IncrementalText(decoder, params.stop, body.include_stop_str_in_output)
            gen = Generation(s.backend, gen_request, text, s.metrics, arrival)
            pieces = _read(gen.pieces(), thinking, calls)
            if shown is not None:
                sent = shown[p]
                echo = sent if isinstance(sent, str) else s.tokenizer.decode(prompt_ids)
                pieces = echoed(pieces, gen, echo, prompt_ids)
            logprobs = Logprobs(s.tokenizer, chat, params.top_logprobs) if params.logprobs else None
            out.append(Choice(index, gen, pieces, logprobs))
    return out


def _read(
    pieces: AsyncIterator[Piece], thinking: ReasoningSyntax | None, calls: ParserFactory | None
) -> AsyncIterator[Piece]:
    """A choice's pieces with its thinking, then its tool calls, taken out of the text."""
    if thinking is not None:
        pieces = split_reasoning(pieces, thinking)
    if calls is not None:
        pieces = extract_tool_calls(pieces, calls())
    return pieces
