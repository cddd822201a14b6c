"""`Engine.generate`: prompts run to completion together, with their text.

The engine's steps deal in token ids; here, as at the router, the text is decoded one
token at a time and a stop string found in it ends its request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.detokenize import IncrementalText
from engine.request import FinishReason, Request
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.engine import Engine


@dataclass(slots=True)
class Completion:
    """The whole result of one prompt, for offline use (`Engine.generate`)."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    logprobs: list[float]
    num_cached_tokens: int


def run_to_completion(
    engine: Engine, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None
) -> list[Completion]:
    tag = time.monotonic_ns()
    reqs = [engine.add_request(f"generate-{tag}-{i}", p, params) for i, p in enumerate(prompts)]
    texts = {r.request_id: _text_for(engine, r) for r in reqs}
    pieces: dict[str, list[str]] = {r.request_id: [] for r in reqs}
    while engine.has_unfinished():
        for out in engine.step():
            text = texts.get(out.request_id)
            if text is None:  # not ours, or no tokenizer: no text
                continue
            stopped = text.add(out.new_token_ids)
            pieces[out.request_id].append(text.take(final=stopped or out.finished))
            if stopped and not out.finished:
                engine.abort(out.request_id, FinishReason.STOP)
    return [_completion(r, texts[r.request_id], pieces[r.request_id]) for r in reqs]


def _text_for(engine: Engine, req: Request) -> IncrementalText | None:
    return engine.text_stream(req.params.stop) if engine.tokenizer is not None else None


def _completion(req: Request, text: IncrementalText | None, pieces: list[str]) -> Completion:
    # A stop string wins over the reason the engine saw for the same token (as before).
    stopped = text is not None and text.stopped_on is not None
    reason = FinishReason.STOP if stopped else req.finish_reason
    return Completion(
        req.output_token_ids, "".join(pieces), reason, req.logprobs, req.num_cached_tokens
    )
