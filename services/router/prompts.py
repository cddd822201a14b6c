"""Prompts to token ids: the one place the router tokenizes (the workers never do)."""

from __future__ import annotations

from engine.tokenizer import Tokenizer
from services.router.errors import APIError
from services.router.protocol import ChatCompletionRequest, CompletionRequest


def chat_prompt_ids(tokenizer: Tokenizer, body: ChatCompletionRequest) -> list[int]:
    try:
        ids = tokenizer.apply_chat_template(body.chat())
    except ValueError as e:  # no chat template
        raise APIError(400, str(e), param="messages") from None
    return _non_empty(ids, "messages")


def completion_prompt_ids(tokenizer: Tokenizer, body: CompletionRequest) -> list[int]:
    prompt = body.single_prompt()
    if isinstance(prompt, str):
        return _non_empty(tokenizer.encode(prompt), "prompt")
    vocab = tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in prompt):
        raise APIError(400, f"Token ids in the prompt must be in [0, {vocab}).", param="prompt")
    return _non_empty(list(prompt), "prompt")


def _non_empty(ids: list[int], param: str) -> list[int]:
    if not ids:
        raise APIError(400, "The prompt must contain at least one token.", param=param)
    return ids
