"""Driving an in-process Engine by hand."""

from __future__ import annotations

from engine import Engine


def drain(engine: Engine) -> list[int]:
    """Step until nothing is unfinished; every token id produced, in order."""
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
    return tokens
