"""Reasoning models' thinking, split from their answers (`--reasoning-parser`, vLLM's flag).

A reasoning model writes its thinking between two tags, then the answer:

    <think>\\n The user asks ... \\n</think>\\n\\nParis.
    |tag   |<------ reasoning_content ---->|tag   |<- content ->|

Where the thinking starts depends on the model's chat template. Qwen3's output opens the
tag itself (and without it, or with `enable_thinking: false`, the whole output is the
answer); DeepSeek-R1's and MiniMax-M2's templates open it in the prompt, so their output
starts inside the thinking (a leading tag is dropped) and is all thinking until it closes.

The split runs on the router's text, piece by piece as it streams: a tag cut across pieces
is held back until it is whole, so a stream's pieces add up to what the whole answer gives.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from engine.sampling_params import SamplingParams
from services.router.generation import Piece
from services.router.held_text import marker_start_at_end


@dataclass(frozen=True, slots=True)
class ReasoningSyntax:
    start: str
    end: str
    # the chat template opens the thinking: the output begins inside it
    starts_inside: bool


_THINK = ("<think>", "</think>")
PARSERS: dict[str, ReasoningSyntax] = {
    "qwen3": ReasoningSyntax(*_THINK, starts_inside=False),
    "deepseek_r1": ReasoningSyntax(*_THINK, starts_inside=True),
    "minimax_m2": ReasoningSyntax(*_THINK, starts_inside=True),
}


def grammar_after_thinking(
    syntax: ReasoningSyntax, params: SamplingParams, end_ids: Sequence[int]
) -> SamplingParams:
    """A structured output holds the answer. Where the output opens the thinking (qwen3),
    the grammar holds the whole output and so decides whether there is any; where it
    starts inside the thinking (deepseek_r1, minimax_m2), the grammar starts once the end
    tag's tokens (`end_ids`: one special token in those models' tokenizers) are in the
    output, as vLLM does: the thinking stays free, the answer after it follows the grammar."""
    if not syntax.starts_inside or params.guided is None:
        return params
    return replace(params, guided=replace(params.guided, after=tuple(end_ids)))


class _Part(enum.Enum):
    START = "start"  # nothing decided yet: the output may still open the thinking
    REASONING = "reasoning"
    CONTENT = "content"


class ReasoningSplitter:
    """One answer's text in, (reasoning, content) out, as it arrives."""

    def __init__(self, syntax: ReasoningSyntax) -> None:
        self._syntax = syntax
        self._part = _Part.START
        self._held = ""  # text that may be the start of a tag

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """The reasoning and the content `text` adds; with `final`, nothing is held back."""
        s = self._syntax
        text = self._held + text
        self._held = ""
        reasoning = ""
        if self._part is _Part.START:
            if text.startswith(s.start):
                text, self._part = text[len(s.start) :], _Part.REASONING
            elif s.start.startswith(text) and not final:
                self._held = text  # may still become the opening tag
                return "", ""
            else:
                self._part = _Part.REASONING if s.starts_inside else _Part.CONTENT
        if self._part is _Part.REASONING:
            head, sep, tail = text.partition(s.end)
            if not sep:
                keep = 0 if final else marker_start_at_end(text, s.end)
                self._held = text[len(text) - keep :] if keep else ""
                return text[: len(text) - keep], ""
            reasoning, text, self._part = head, tail, _Part.CONTENT
        return reasoning, text


async def split_reasoning(
    pieces: AsyncIterator[Piece], syntax: ReasoningSyntax
) -> AsyncIterator[Piece]:
    """`pieces` with each one's thinking moved from its text to its reasoning."""
    splitter = ReasoningSplitter(syntax)
    try:
        async for piece in pieces:
            final = piece.finish_reason is not None
            piece.reasoning, piece.text = splitter.feed(piece.text, final)
            yield piece
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # closing: the abort
