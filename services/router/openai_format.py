"""Response bodies in OpenAI's shapes: whole responses, stream chunks, usage and logprobs.

Chat and completions differ only in names and in where the text goes, so each has a small
format object with the same four methods; the endpoints and the SSE writer use either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi.responses import JSONResponse

from engine.request import TopLogprobs
from engine.tokenizer import Tokenizer
from services.router.backend import StartTimes
from services.router.generation import Answer, Piece, Usage
from services.router.tool_parsers import CallOut

Json = dict[str, Any]


class FastJSONResponse(JSONResponse):
    """JSONResponse written by orjson: the same compact UTF-8 bytes, in C."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(frozen=True, slots=True)
class Meta:
    id: str
    created: int  # unix seconds
    model: str


def usage_body(u: Usage, timing: bool = False) -> Json:
    """OpenAI's usage; with `timing` (the request's `include_timing`, Tandem's own), also
    where the first choice's start went: arrival to first token, and the workers' stages
    (null where its path had none: a colocated request moves no KV)."""
    body: Json = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }
    if timing:
        s = u.start or StartTimes()
        stages = {
            "ttft_s": u.ttft_s,
            "queue_s": s.queue_s,
            "prefill_s": s.prefill_s,
            "kv_transfer_s": s.kv_transfer_s,
            "first_decode_s": s.first_decode_s,
        }
        body["timing"] = {k: None if v is None else round(v, 6) for k, v in stages.items()}
    return body


class Logprobs:
    """The chosen tokens' logprobs, and the likeliest tokens' where asked (`tops`: one per
    token, or none), in the endpoint's shape. One per request: completions' `text_offset`
    runs on across stream chunks.

    A token's text is its own decoding, so a token holding part of a multi-byte character
    shows as U+FFFD (and its `bytes` as that character's). In completions' `top_logprobs`
    (a map from text to logprob) two tokens of the same text keep the likelier's."""

    def __init__(self, tokenizer: Tokenizer, chat: bool, top: int) -> None:
        self._tok, self._chat, self._top = tokenizer, chat, top  # top: how many were asked
        self._offset = 0

    def body(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float | None],
        tops: Sequence[TopLogprobs | None],
    ) -> Json:
        """None in `logprobs` and `tops`: an echoed prompt's first token, which nothing
        comes before (completions show null for both)."""
        tokens = [self._tok.decode([t]) for t in token_ids]
        # [(text, logprob)] of each position's likeliest tokens; empty where not asked
        top_texts: list[list[tuple[str, float]] | None] = [
            None if top is None else [(self._tok.decode([t]), lp) for t, lp in top]
            for top in (tops[: len(tokens)] if self._top else ())
        ]
        top_texts += [[] for _ in range(len(tokens) - len(top_texts))]
        if self._chat:
            return {
                "content": [
                    _chat_entry(s, lp, top or [])
                    for s, lp, top in zip(tokens, logprobs, top_texts, strict=False)
                ]
            }
        offsets = []
        for s in tokens:
            offsets.append(self._offset)
            self._offset += len(s)
        return {
            "tokens": tokens,
            "token_logprobs": list(logprobs),
            "top_logprobs": (
                [None if top is None else _likelier_first(top) for top in top_texts]
                if self._top
                else None
            ),
            "text_offset": offsets,
        }


def _chat_entry(text: str, logprob: float | None, top: list[tuple[str, float]]) -> Json:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode())} for s, lp in top],
    }


def _likelier_first(top: list[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for text, lp in top:  # likeliest first: a later token of the same text loses
        out.setdefault(text, lp)
    return out


class Format(Protocol):
    def response(self, answers: Sequence[tuple[Answer, Json | None]], u: Usage) -> Json:
        """The whole answer (stream=false): each choice's answer and logprobs, in order."""
        ...

    def first_chunk(self, index: int) -> Json | None:
        """Sent before any of a choice's text (chat announces the assistant's role)."""
        ...

    def chunk(self, index: int, piece: Piece, logprobs: Json | None) -> Json: ...

    def usage_chunk(self, u: Usage) -> Json:
        """The last chunk with stream_options.include_usage: no choices, the usage."""
        ...


@dataclass(frozen=True, slots=True)
class _Base:
    meta: Meta
    include_usage: bool = False  # streams: every chunk then carries "usage": null
    include_timing: bool = False  # usage carries "timing" (usage_body)

    def _envelope(self, obj: str, choices: list[Json], usage: Json | None = None) -> Json:
        m = self.meta
        body = {"id": m.id, "object": obj, "created": m.created, "model": m.model}
        body["choices"] = choices
        if usage is not None:
            body["usage"] = usage
        elif self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, u: Usage) -> Json:
        return self._envelope(self._chunk_object, [], usage_body(u, self.include_timing))

    _chunk_object = ""


@dataclass(frozen=True, slots=True)
class ChatFormat(_Base):
    # a reasoning parser runs (reasoning.py): messages say `reasoning_content`, null or not
    reasoning: bool = False
    _chunk_object = "chat.completion.chunk"

    def response(self, answers: Sequence[tuple[Answer, Json | None]], u: Usage) -> Json:
        choices = [self._choice(i, a, lp) for i, (a, lp) in enumerate(answers)]
        return self._envelope("chat.completion", choices, usage_body(u, self.include_timing))

    def _choice(self, index: int, answer: Answer, logprobs: Json | None) -> Json:
        message: Json = {"role": "assistant", "content": answer.text}
        if self.reasoning:
            # as vLLM: an answer that is all thinking has no content, not ""
            message["reasoning_content"] = answer.reasoning or None
            if answer.reasoning and not answer.text:
                message["content"] = None
        if answer.tool_calls:
            message["tool_calls"] = [_call(c) for c in answer.tool_calls]
            message["content"] = answer.text or None
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": answer.finish_reason,
        }

    def first_chunk(self, index: int) -> Json | None:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._envelope(self._chunk_object, [choice])

    def chunk(self, index: int, piece: Piece, logprobs: Json | None) -> Json:
        delta: Json = {"reasoning_content": piece.reasoning} if piece.reasoning else {}
        if piece.text:
            delta["content"] = piece.text
        if piece.tool_calls:
            delta["tool_calls"] = [{"index": c.index, **_call(c)} for c in piece.tool_calls]
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": piece.finish_reason,
        }
        return self._envelope(self._chunk_object, [choice])


class CompletionFormat(_Base):
    _chunk_object = "text_completion"

    def response(self, answers: Sequence[tuple[Answer, Json | None]], u: Usage) -> Json:
        choices = [
            _completion_choice(i, a.text, lp, a.finish_reason) for i, (a, lp) in enumerate(answers)
        ]
        return self._envelope("text_completion", choices, usage_body(u, self.include_timing))

    def first_chunk(self, index: int) -> Json | None:
        return None

    def chunk(self, index: int, piece: Piece, logprobs: Json | None) -> Json:
        choice = _completion_choice(index, piece.text, logprobs, piece.finish_reason)
        return self._envelope(self._chunk_object, [choice])


def _call(c: CallOut) -> Json:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


def _completion_choice(index: int, text: str, logprobs: Json | None, finish: str | None) -> Json:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
