"""Driving an in-process Engine by hand."""

from __future__ import annotations

from typing import Any

from engine import Engine


def drain(engine: Engine) -> list[int]:
    """Step until nothing is unfinished; every token id produced, in order."""
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
    return tokens


def record_batch_sizes(captured: Any) -> list[int]:
    """Wrap a captured decode step's `run` (engine/compiled.py, engine/cuda_graph.py) so it
    records each step's batch size into the list returned, as steps run."""
    sizes: list[int] = []
    replay = captured.run

    def recording_run(chunks: Any) -> Any:
        sizes.append(len(chunks))
        return replay(chunks)

    captured.run = recording_run
    return sizes
