"""Long prompts are tokenized off the event loop, which meanwhile serves every other stream;
short ones inline, where a thread hop would cost more than the work."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from engine.tokenizer import Tokenizer
from services.router.errors import APIError
from services.router.prompts import INLINE_CHARS, chat_prompt_ids, encode_text
from services.router.protocol import ChatCompletionRequest
from tests.unit.test_router_app import TOKENIZER, _byte_tokenizer


class _Where:
    """The byte tokenizer, noting the thread each call ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, text: str) -> list[int]:
        self.threads.append(threading.get_ident())
        return TOKENIZER.encode(text)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        self.threads.append(threading.get_ident())
        return TOKENIZER.apply_chat_template(messages, template_kwargs, tools)


def _chat(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}]}
    )


def test_long_prompts_are_tokenized_on_a_thread_short_ones_inline() -> None:
    short, long = "x" * INLINE_CHARS, "y" * (INLINE_CHARS + 1)

    async def main() -> None:
        loop = threading.get_ident()
        tok = _Where()
        assert await encode_text(tok, short) == TOKENIZER.encode(short)  # type: ignore[arg-type]
        assert await encode_text(tok, long) == TOKENIZER.encode(long)  # type: ignore[arg-type]
        ids = await chat_prompt_ids(tok, _chat(short))  # type: ignore[arg-type]
        assert ids == TOKENIZER.apply_chat_template(_chat(short).chat())
        await chat_prompt_ids(tok, _chat(long))  # type: ignore[arg-type]
        assert [t == loop for t in tok.threads] == [True, False, True, False]

    asyncio.run(main())


def _templated(template: str) -> Tokenizer:
    """The byte tokenizer with another chat template (transformers renders it)."""
    tok = _byte_tokenizer()
    tok.hf.chat_template = template
    return tok


def _with_kwargs(kwargs: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": kwargs,
        }
    )


def test_chat_template_kwargs_reach_the_template_as_its_variables() -> None:
    tok = _templated("{% if enable_thinking %}<think>{% endif %}{{ messages[0].content }}")
    on = asyncio.run(chat_prompt_ids(tok, _with_kwargs({"enable_thinking": True})))
    off = asyncio.run(chat_prompt_ids(tok, _with_kwargs({"enable_thinking": False})))
    assert tok.decode(on) == "<think>hi" and tok.decode(off) == "hi"


@pytest.mark.parametrize(
    "kwargs", [{"tokenize": True}, {"messages": []}, {"add_generation_prompt": False}]
)
def test_kwargs_that_are_apply_chat_templates_own_arguments_are_a_400(
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(APIError) as e:
        asyncio.run(chat_prompt_ids(TOKENIZER, _with_kwargs(kwargs)))
    assert e.value.param == "chat_template_kwargs"


def test_a_template_that_raises_on_the_kwargs_is_a_400_naming_them() -> None:
    tok = _templated("{% if strict %}{{ raise_exception('no strict mode here') }}{% endif %}x")
    with pytest.raises(APIError) as e:
        asyncio.run(chat_prompt_ids(tok, _with_kwargs({"strict": True})))
    assert e.value.param == "chat_template_kwargs" and "no strict mode" in str(e.value)
