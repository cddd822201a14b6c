"""Several choices in one answer (services/router/choices.py): the order they start in,
their merged pieces, a failure that ends them all, and their usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from engine.sampling_params import SamplingParams
from services.router.backend import BackendError
from services.router.choices import Choice, kth_params, merged, total_usage
from services.router.generation import Generation, Piece, Usage


class _Gen:
    """Stands in for a Generation where only its usage is read."""

    def __init__(self, prompt: int, out: int, cached: int) -> None:
        self.usage = Usage(prompt, out, cached)


def _choice(index: int, texts: list[str], log: list[str], fail: bool = False) -> Choice:
    async def pieces() -> AsyncIterator[Piece]:
        log.append(f"start {index}")
        try:
            for i, t in enumerate(texts):
                await asyncio.sleep(0)
                if fail and i == 1:
                    raise BackendError(503, "worker gone")
                log.append(f"piece {index}")
                yield Piece(t, [i], [0.0], "stop" if i == len(texts) - 1 else None)
        finally:
            log.append(f"end {index}")

    return Choice(index, cast(Generation, _Gen(0, 0, 0)), pieces(), None)


def _run(choices: list[Choice], n: int) -> list[tuple[int, str]]:
    async def go() -> list[tuple[int, str]]:
        return [(i, p.text) async for i, p in merged(choices, n)]

    return asyncio.run(go())


def test_a_prompts_other_choices_start_after_its_first_has_two_pieces() -> None:
    log: list[str] = []
    # two prompts, two choices each: 0 and 2 are first choices, 1 and 3 wait for them
    choices = [_choice(i, [f"{i}a", f"{i}b", f"{i}c"], log) for i in range(4)]
    got = _run(choices, 2)
    assert sorted(got) == [(i, f"{i}{s}") for i in range(4) for s in "abc"]
    assert log[:2] == ["start 0", "start 2"]
    for first, later in ((0, 1), (2, 3)):  # the prompt is cached where the first decodes
        second_piece = [i for i, e in enumerate(log) if e == f"piece {first}"][1]
        assert log.index(f"start {later}") > second_piece
    assert {e for e in log if not e.startswith("piece")} == {
        f"{e} {i}" for e in ("start", "end") for i in range(4)
    }
    for i in range(4):  # each choice's own pieces stay in order
        assert [t for j, t in got if j == i] == [f"{i}a", f"{i}b", f"{i}c"]


def test_a_one_token_first_choice_still_starts_the_others() -> None:
    log: list[str] = []
    assert sorted(_run([_choice(0, ["a"], log), _choice(1, ["b"], log)], 2)) == [(0, "a"), (1, "b")]


def test_one_failure_ends_every_choice() -> None:
    log: list[str] = []
    choices = [_choice(0, ["a", "b", "c"], log), _choice(1, ["x", "y", "z", "w"], log, fail=True)]
    with pytest.raises(BackendError, match="worker gone"):
        _run(choices, 2)
    assert {"end 0", "end 1"} <= set(log)  # the other was closed: its request aborted


def test_closing_early_closes_every_started_choice() -> None:
    log: list[str] = []
    choices = [_choice(i, ["a", "b", "c", "d"], log) for i in range(3)]

    async def first_two() -> None:
        items = merged(choices, 3)
        await anext(items)
        await anext(items)
        await items.aclose()  # type: ignore[attr-defined]

    asyncio.run(first_two())
    assert log.count("end 0") == 1 and all(
        log.count(f"start {i}") == log.count(f"end {i}") for i in range(3)
    )


def test_seeds_and_usage() -> None:
    seeded = SamplingParams(seed=7)
    assert [kth_params(seeded, k).seed for k in range(3)] == [7, 8, 9]
    assert kth_params(SamplingParams(), 2).seed is None
    assert kth_params(SamplingParams(seed=2**64 - 1), 1).seed == 0  # the wire's uint64
    gens = [_Gen(10, 4, 8), _Gen(10, 5, 8), _Gen(12, 3, 0), _Gen(12, 6, 8)]
    choices = [
        Choice(i, cast(Generation, g), cast(AsyncIterator[Piece], None), None)
        for i, g in enumerate(gens)
    ]
    u = total_usage(choices, 2)  # two prompts, two choices each: each prompt counted once
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (22, 18, 8)
