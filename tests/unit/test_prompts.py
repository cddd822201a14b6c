"""Long prompts are tokenized off the event loop, which meanwhile serves every other stream;
short ones inline, where a thread hop would cost more than the work."""

from __future__ import annotations

import asyncio
import threading

from services.router.prompts import INLINE_CHARS, chat_prompt_ids, encode_text
from services.router.protocol import ChatCompletionRequest
from tests.unit.test_router_app import TOKENIZER


class _Where:
    """The byte tokenizer, noting the thread each call ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, text: str) -> list[int]:
        self.threads.append(threading.get_ident())
        return TOKENIZER.encode(text)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        self.threads.append(threading.get_ident())
        return TOKENIZER.apply_chat_template(messages)


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
