"""POST /tokenize and /detokenize, shaped as vLLM's: the token ids the router would run for
a prompt, and the text of token ids.

    /tokenize   {"prompt": "text"}    -> the ids /v1/completions runs for that text
                {"messages": [...]}   -> the ids /v1/chat/completions runs (chat template)
                answer: {"tokens": [...], "count": N, "max_model_len": M}
    /detokenize {"tokens": [...]}     -> {"prompt": "text"} (special tokens left out, as
                                         in a completion's text)

`model` is optional; when given it must be the served model. Clients use it to count tokens
as the server does, and the load generator to check its own tokenizer against ours. Tandem
adds no special tokens to a prompt, so vLLM's add_special_tokens (like any unknown field)
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.tokenizer import Tokenizer
from services.router.prompts import chat_prompt_ids, decode_ids, encode_text
from services.router.protocol import ChatCompletionRequest, ChatMessage

MAX_DETOKENIZE = 1_000_000  # ids in one /detokenize body (its size is bounded before too)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # as the OpenAI bodies

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_prompt(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE)


def tokenize_routes(
    tokenizer: Tokenizer, max_model_len: int, check_model: Callable[[str], None]
) -> APIRouter:
    r = APIRouter()

    @r.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        if body.model is not None:
            check_model(body.model)
        ids = await _ids(tokenizer, body)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": max_model_len})

    @r.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        if body.model is not None:
            check_model(body.model)
        return JSONResponse({"prompt": await decode_ids(tokenizer, body.tokens)})

    return r


async def _ids(tokenizer: Tokenizer, body: TokenizeRequest) -> list[int]:
    # Through the endpoints' own paths, so that they cannot drift apart.
    if body.prompt is not None:
        return await encode_text(tokenizer, body.prompt)
    chat: dict[str, Any] = {"model": body.model or "", "messages": body.messages}
    return await chat_prompt_ids(tokenizer, ChatCompletionRequest.model_validate(chat))
