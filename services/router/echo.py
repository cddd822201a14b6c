"""Completions' `echo`: the prompt shown ahead of its completion, as OpenAI's legacy API
and vLLM show it. Its text comes first (the prompt as sent, or its ids' text); with
`logprobs`, its tokens too, the first with null logprobs (nothing comes before it) and the
others with the model's own, given the tokens before them: computed where the prompt is
prefilled (engine/prompt_logprobs.py) and sent with the first token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from services.router.generation import Generation, Piece


async def echoed(
    pieces: AsyncIterator[Piece], generation: Generation, text: str, prompt_ids: Sequence[int]
) -> AsyncIterator[Piece]:
    """`pieces`, after a piece of the prompt's own: sent once the first token is in, since
    the prompt's logprobs come with it."""
    try:
        first = True
        async for piece in pieces:
            if first:
                first = False
                yield _prompt_piece(generation, text, prompt_ids)
            yield piece
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # closing: the abort


def _prompt_piece(generation: Generation, text: str, prompt_ids: Sequence[int]) -> Piece:
    k = generation.request.params.prompt_logprobs
    if k is None:  # logprobs not asked: the text alone
        return Piece(text, list(prompt_ids), [])
    tops = [None, *generation.prompt_top_logprobs] if k else []
    return Piece(text, list(prompt_ids), [None, *generation.prompt_logprobs], None, tops)
