"""Prompts to token ids: the one place the router tokenizes (the workers never do).

Tokenizing takes time in proportion to the text (a body at the size limit: about a second
here), and on the event loop it would stall every stream the router is sending meanwhile:
long prompts are tokenized on a thread. Short ones stay inline, where a thread hop would
cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from jinja2 import TemplateError

from engine.tokenizer import RESERVED_TEMPLATE_KWARGS, Tokenizer
from services.router.completion_body import CompletionRequest
from services.router.errors import APIError
from services.router.protocol import ChatCompletionRequest

T = TypeVar("T")

INLINE_CHARS = 8192  # a prompt's text up to this long is tokenized on the event loop


async def chat_prompt_ids(tokenizer: Tokenizer, body: ChatCompletionRequest) -> list[int]:
    chat = body.chat()
    kwargs = _template_kwargs(body)
    try:
        chars = sum(len(m["content"]) for m in chat)
        ids = await _off_loop(
            chars,
            partial(
                tokenizer.apply_chat_template,
                template_kwargs=kwargs,
                tools=body.template_tools(),
            ),
            chat,
        )
    except ValueError as e:  # no chat template
        raise APIError(400, str(e), param="messages") from None
    except TemplateError as e:  # the template refused these messages or variables
        param = "chat_template_kwargs" if kwargs else "messages"
        raise APIError(400, f"The chat template failed: {e}", param=param) from None
    return _non_empty(ids, "messages")


def _template_kwargs(body: ChatCompletionRequest) -> dict[str, object]:
    kwargs = body.chat_template_kwargs or {}
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & kwargs.keys())
    if reserved:
        raise APIError(
            400,
            f"chat_template_kwargs may not set {', '.join(reserved)}: those are not the "
            "template's variables.",
            param="chat_template_kwargs",
        )
    return kwargs


async def completion_prompt_ids(tokenizer: Tokenizer, body: CompletionRequest) -> list[list[int]]:
    """Each of the request's prompts as ids."""
    return [await _prompt_ids(tokenizer, p) for p in body.prompts()]


async def _prompt_ids(tokenizer: Tokenizer, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return _non_empty(await encode_text(tokenizer, prompt), "prompt")
    vocab = tokenizer.vocab_size
    if not _in_vocab(prompt, vocab):
        raise APIError(400, f"Token ids in the prompt must be in [0, {vocab}).", param="prompt")
    return _non_empty(list(prompt), "prompt")


def _in_vocab(ids: list[int], vocab: int) -> bool:
    """Every id in [0, vocab): min and max run in C (a 4k-token prompt's ids checked one by
    one in Python cost the router 0.2 ms)."""
    return not ids or (min(ids) >= 0 and max(ids) < vocab)


async def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """A completion's text prompt as ids (no special tokens added)."""
    return await _off_loop(len(text), tokenizer.encode, text)


async def decode_ids(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of token ids, as a completion's text shows it (special tokens left out)."""
    vocab = tokenizer.vocab_size
    if not _in_vocab(ids, vocab):
        raise APIError(400, f"Token ids must be in [0, {vocab}).", param="tokens")
    if len(ids) <= INLINE_CHARS // 4:  # ~4 characters a token
        return tokenizer.decode(ids)
    return await asyncio.to_thread(tokenizer.decode, ids)


async def _off_loop(chars: int, fn: Callable[[T], list[int]], arg: T) -> list[int]:
    if chars <= INLINE_CHARS:
        return fn(arg)
    return await asyncio.to_thread(fn, arg)


def _non_empty(ids: list[int], param: str) -> list[int]:
    if not ids:
        raise APIError(400, "The prompt must contain at least one token.", param=param)
    return ids
