"""The reasoning parsers (services/router/reasoning.py) on recorded model outputs: whole, and
streamed in pieces cut everywhere (a stream's pieces must add up to the whole answer's
split, a tag cut in two included)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.sampling_params import GuidedSpec, SamplingParams
from services.router.generation import Piece
from services.router.reasoning import (
    PARSERS,
    ReasoningSplitter,
    grammar_after_thinking,
    split_reasoning,
)

# Outputs in the shapes the models write (the chat template's part of the tags left out).
QWEN3 = "<think>\nThe user wants the capital of France. It is Paris.\n</think>\n\nParis."
R1 = "The user wants the capital of France.\nIt is Paris.\n</think>\n\nThe capital is Paris."
MINIMAX_M2 = "Capital of France: Paris.</think>\n\nParis is the capital of France."

# (parser, output, reasoning, content): reasoning None where the answer has none
CASES = [
    ("qwen3", QWEN3, "\nThe user wants the capital of France. It is Paris.\n", "\n\nParis."),
    ("qwen3", "Paris.", None, "Paris."),  # enable_thinking false: no tags at all
    ("qwen3", "<thin>k Paris", None, "<thin>k Paris"),  # not the tag
    ("qwen3", "Paris <think>x</think>", None, "Paris <think>x</think>"),  # not at the start
    ("qwen3", "<think>cut off at max_tokens", "cut off at max_tokens", ""),
    ("qwen3", "<think></think>Paris.", None, "Paris."),  # an empty thought
    ("deepseek_r1", R1, R1.split("</think>")[0], "\n\nThe capital is Paris."),
    ("deepseek_r1", "<think>" + R1, R1.split("</think>")[0], "\n\nThe capital is Paris."),
    ("deepseek_r1", "still thinking when cut", "still thinking when cut", ""),
    ("deepseek_r1", "a</think>b</think>c", "a", "b</think>c"),  # only the first tag ends it
    ("deepseek_r1", "a</thin", "a</thin", ""),  # a tag's start at the very end: kept
    ("minimax_m2", MINIMAX_M2, "Capital of France: Paris.", "\n\nParis is the capital of France."),
    ("qwen3", "", None, ""),
    ("qwen3", "<th", None, "<th"),  # the tag's start, and then the end
]


def _whole(parser: str, text: str) -> tuple[str | None, str]:
    reasoning, content = ReasoningSplitter(PARSERS[parser]).feed(text, final=True)
    return reasoning or None, content


def _streamed(parser: str, pieces: list[str]) -> tuple[str | None, str]:
    splitter = ReasoningSplitter(PARSERS[parser])
    reasoning, content = "", ""
    for i, piece in enumerate(pieces):
        r, c = splitter.feed(piece, final=i == len(pieces) - 1)
        reasoning, content = reasoning + r, content + c
    return reasoning or None, content


@pytest.mark.parametrize(("parser", "text", "reasoning", "content"), CASES)
def test_a_whole_answer_splits_at_its_tags(
    parser: str, text: str, reasoning: str | None, content: str
) -> None:
    assert _whole(parser, text) == (reasoning, content)


@pytest.mark.parametrize(("parser", "text", "reasoning", "content"), CASES)
def test_a_stream_cut_anywhere_adds_up_to_the_whole(
    parser: str, text: str, reasoning: str | None, content: str
) -> None:
    want = (reasoning, content)
    assert _streamed(parser, list(text) + [""]) == want  # a character a piece, then the end
    for i in range(len(text) + 1):
        assert _streamed(parser, [text[:i], text[i:]]) == want, i
    for i in range(0, len(text), 3):  # three pieces, the last one finishing
        j = min(len(text), i + 5)
        assert _streamed(parser, [text[:i], text[i:j], text[j:]]) == want, (i, j)


def test_a_tag_cut_across_pieces_is_held_until_whole() -> None:
    splitter = ReasoningSplitter(PARSERS["qwen3"])
    assert splitter.feed("<thi") == ("", "")  # may be the tag: nothing yet
    assert splitter.feed("nk>plan</th") == ("plan", "")  # may be the end tag: held
    assert splitter.feed("ink>Paris") == ("", "Paris")
    assert splitter.feed(" and more", final=True) == ("", " and more")


def _pieces(texts: list[str]) -> AsyncIterator[Piece]:
    async def gen() -> AsyncIterator[Piece]:
        for i, t in enumerate(texts):
            yield Piece(t, [i], [0.0], "stop" if i == len(texts) - 1 else None)

    return gen()


def test_pieces_carry_their_reasoning_and_closing_closes_the_source() -> None:
    async def run() -> tuple[list[tuple[str, str]], bool]:
        source = _pieces(["<think>pl", "an</think>Par", "is"])
        out = [(p.reasoning, p.text) async for p in split_reasoning(source, PARSERS["qwen3"])]
        early = _pieces(["<think>a", "b", "c"])
        split = split_reasoning(early, PARSERS["qwen3"])
        await anext(split)
        await split.aclose()  # type: ignore[attr-defined]
        closed = early.ag_frame is None  # type: ignore[attr-defined]
        return out, closed

    out, closed = asyncio.run(run())
    assert out == [("pl", ""), ("an", "Par"), ("", "is")]
    assert closed  # the request's own stream is closed: the backend aborts it


def test_a_grammar_waits_for_the_thinking_where_the_output_starts_inside_it() -> None:
    guided = SamplingParams(guided=GuidedSpec("regex", "[a-z]+"))
    for name in ("deepseek_r1", "minimax_m2"):
        got = grammar_after_thinking(PARSERS[name], guided, [128799])
        assert got.guided == GuidedSpec("regex", "[a-z]+", after=(128799,))
        assert grammar_after_thinking(PARSERS[name], SamplingParams(), [128799]).guided is None
    # qwen3's output opens the thinking itself: the grammar decides whether it thinks
    assert grammar_after_thinking(PARSERS["qwen3"], guided, [128799]) == guided
