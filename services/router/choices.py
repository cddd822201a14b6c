"""Several choices in one answer: `n` generations of each prompt, and completions' lists of
prompts. Choice `p * n + k` is prompt p's k-th generation (OpenAI's and vLLM's order).

Each choice is a request of its own on the workers. A prompt's first choice runs alone
until its second token (or its end): by then the prompt's blocks are in the prefix cache of
the worker it decodes on (a disaggregated prompt's first token comes from the prefill
worker, before the decode worker has read the blocks), and the other choices of that
prompt reuse them instead of computing the prompt again. Seeded choices draw with seed + k,
so they differ from each other and repeat run to run.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine.sampling_params import SamplingParams
from services.router.generation import Generation, Piece, Usage
from services.router.openai_format import Logprobs


@dataclass(slots=True)
class Choice:
    index: int
    generation: Generation
    pieces: AsyncIterator[Piece]
    logprobs: Logprobs | None  # one each: completions' text offsets run on per choice


def kth_params(params: SamplingParams, k: int) -> SamplingParams:
    """A prompt's k-th choice's parameters: the first's, with seed + k where seeded."""
    if k == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + k)  # taken modulo 2**64 there


def total_usage(choices: Sequence[Choice], n: int) -> Usage:
    """Every choice's output tokens; each prompt (and its cached part) once; the first
    choice's timing."""
    firsts = [c.generation.usage for c in choices[::n]]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in firsts),
        completion_tokens=sum(c.generation.usage.completion_tokens for c in choices),
        cached_tokens=sum(u.cached_tokens for u in firsts),
        ttft_s=firsts[0].ttft_s,
        start=firsts[0].start,
    )


async def merged(choices: Sequence[Choice], n: int) -> AsyncIterator[tuple[int, Piece]]:
    """Every choice's pieces as they come, with its index. Closing this closes (aborts)
    every choice still running."""
    if len(choices) == 1:  # no tasks, no queue: the common case stays as cheap as it was
        only = choices[0].pieces
        try:
            async for piece in only:
                yield 0, piece
        finally:
            await only.aclose()  # type: ignore[attr-defined]
        return
    queue: _Queue = asyncio.Queue()
    tasks = [_start(c, queue) for c in choices[::n]]  # each prompt's first choice
    later = [c for i, c in enumerate(choices) if i % n]
    seen = [0] * (len(choices) // n)  # items from each prompt's first choice
    unfinished = len(choices)
    try:
        while unfinished:
            index, item = await queue.get()
            if index % n == 0:
                prompt = index // n
                seen[prompt] += 1
                if seen[prompt] == 2:  # the first choice's prompt is cached where it decodes
                    tasks += [_start(c, queue) for c in later if c.index // n == prompt]
            if isinstance(item, Exception):
                raise item
            if item is None:
                unfinished -= 1
            else:
                yield index, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in choices:
            await c.pieces.aclose()  # type: ignore[attr-defined]


# (a choice's index, its next piece, the error that ended it, or None once it finished)
_Queue = asyncio.Queue[tuple[int, Piece | Exception | None]]


def _start(choice: Choice, queue: _Queue) -> asyncio.Task[None]:
    async def pump() -> None:
        try:
            async for piece in choice.pieces:
                queue.put_nowait((choice.index, piece))
        except Exception as e:  # BackendError and the like: the consumer raises it
            queue.put_nowait((choice.index, e))
            return
        queue.put_nowait((choice.index, None))

    return asyncio.create_task(pump())
