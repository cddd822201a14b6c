"""One request's run: the backend's token deltas in, text pieces out, metrics on the way.

The backend's token ids are the truth, and the router is the one owner of their text: it
is decoded here, one token at a time, by an `IncrementalText` that holds back what may
still turn into a stop string or a whole character. Workers never see text, so a stop
string ends the request here: closing the backend's iterator aborts the request on its
worker and frees its blocks (the same path as a client that goes away).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.detokenize import IncrementalText
from engine.request import FinishReason, TopLogprobs
from services.router.backend import Backend, BackendError, GenerateRequest, StartTimes, TokenDelta
from services.router.metrics import ABORTED, ERROR, OK, RouterMetrics
from services.router.request_metrics import ABORT, Finished
from services.router.tool_parsers import CallOut


@dataclass(slots=True)
class Piece:
    """What one backend delta adds to the answer. `finish_reason` is set on the last.
    `reasoning`: the part of its text that is the model's thinking (reasoning.py), and
    `tool_calls`: the calls found in it (tools.py), both taken out of `text`."""

    text: str
    token_ids: list[int]
    logprobs: Sequence[float | None]  # None: an echoed prompt's first token (nothing before)
    finish_reason: str | None = None
    top_logprobs: Sequence[TopLogprobs | None] = field(default_factory=list)
    reasoning: str = ""
    tool_calls: list[CallOut] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0
    route: str = ""
    ttft_s: float | None = None  # arrival to the first token
    start: StartTimes | None = None  # the workers' part of it, and of the second token


class Generation:
    def __init__(
        self,
        backend: Backend,
        request: GenerateRequest,
        text: IncrementalText,
        metrics: RouterMetrics,
        arrival: float,  # time.monotonic() when the HTTP request came in
    ) -> None:
        self.request = request
        self.usage = Usage(prompt_tokens=len(request.prompt_token_ids))
        self._backend, self._text, self._metrics = backend, text, metrics
        self._arrival = arrival
        self._last_token_at: float | None = None
        self._finish_reason = ABORT  # until a piece says otherwise
        # the prompt's tokens' (after the first), where asked: from the first token's delta
        self.prompt_logprobs: list[float] = []
        self.prompt_top_logprobs: list[TopLogprobs] = []

    async def pieces(self) -> AsyncIterator[Piece]:
        """Pieces until one carries a finish reason. Raises BackendError; an engine abort
        is one too (the client must not take a cut-off answer for a whole one)."""
        self._metrics.edge.admitted(self.usage.prompt_tokens)
        deltas = self._backend.generate(self.request)
        status = ABORTED  # until it finishes or fails: covers cancellation and early close
        try:
            async for delta in deltas:
                piece = self._on_delta(delta)
                if piece.finish_reason is not None:
                    break
                yield piece
            else:
                raise BackendError(502, "The backend ended the stream without finishing.")
            status = OK
        except Exception:  # BackendError, or a bug; cancellation stays ABORTED
            status = ERROR
            raise
        finally:
            await _close(deltas)
            self._finish(status)
        yield piece  # the last one, after the books are closed: nobody has to resume us

    def _on_delta(self, delta: TokenDelta) -> Piece:
        ids, logprobs, tops = delta.token_ids, delta.logprobs, delta.top_logprobs
        if self._text.stop and len(ids) > 1:
            # A delta of several tokens (a worker's stream that fell behind): the answer,
            # its usage and logprobs end at the token that completed a stop string.
            stopped = False
            for k, t in enumerate(ids):
                if self._text.add((t,)):
                    stopped, ids = True, ids[: k + 1]
                    logprobs, tops = logprobs[: k + 1], tops[: k + 1]
                    break
        else:
            stopped = self._text.add(ids)
        self._observe(delta, len(ids))
        finish = None
        if stopped or delta.finished:
            finish = FinishReason.STOP if stopped else delta.finish_reason or FinishReason.STOP
        if finish == FinishReason.ABORT:
            raise BackendError(503, "The request was aborted before it finished; retry it.")
        if finish is not None:
            self._finish_reason = finish
        text = self._text.take(final=finish is not None)
        return Piece(text, ids, logprobs, finish, tops)  # the delta's own lists, when whole

    def _observe(self, delta: TokenDelta, num_tokens: int) -> None:
        u = self.usage
        if delta.route:
            u.route = delta.route
        if delta.prompt_logprobs and not self.prompt_logprobs:  # a resumed stream repeats none
            self.prompt_logprobs = delta.prompt_logprobs
            self.prompt_top_logprobs = delta.prompt_top_logprobs
        u.cached_tokens = max(u.cached_tokens, delta.num_cached_tokens)
        if delta.start is not None:
            u.start = delta.start if u.start is None else u.start.then(delta.start)
        if not num_tokens:
            return
        now = time.monotonic()
        if self._last_token_at is None:
            u.ttft_s = now - self._arrival
            self._metrics.edge.first_token(u.ttft_s)
            gap = None
        else:
            gap = now - self._last_token_at
        self._metrics.edge.tokens(num_tokens, gap)
        self._last_token_at = now
        u.completion_tokens += num_tokens

    def _finish(self, status: str) -> None:
        u = self.usage
        self._metrics.record_finished(u.route, status)
        last = self._last_token_at
        self._metrics.edge.finished(
            Finished(
                finished_reason=ERROR if status == ERROR else self._finish_reason,
                prompt_tokens=u.prompt_tokens,
                cached_tokens=u.cached_tokens,
                generation_tokens=u.completion_tokens,
                max_tokens=self.request.params.max_tokens,
                e2e_s=time.monotonic() - self._arrival,
                first_token_s=u.ttft_s,
                last_token_s=None if last is None else last - self._arrival,
                start=u.start,
            )
        )


async def _close(it: AsyncIterator[TokenDelta]) -> None:
    """Close the backend's iterator: for a request still running, that is the abort."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass(slots=True)
class Answer:
    """A whole answer, for stream=false."""

    text: str
    finish_reason: str
    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[TopLogprobs | None]
    reasoning: str = ""
    tool_calls: list[CallOut] = field(default_factory=list)


async def collect(items: AsyncIterator[tuple[int, Piece]], count: int) -> list[Answer]:
    """The whole answers of `count` choices from their pieces (each with its choice's
    index), in the order of their indices."""
    answers = [Answer("", "", [], [], []) for _ in range(count)]
    texts: list[list[str]] = [[] for _ in range(count)]
    thoughts: list[list[str]] = [[] for _ in range(count)]
    async for index, piece in items:
        answer = answers[index]
        texts[index].append(piece.text)
        thoughts[index].append(piece.reasoning)
        answer.token_ids += piece.token_ids
        answer.logprobs += piece.logprobs
        answer.top_logprobs += piece.top_logprobs
        answer.tool_calls += piece.tool_calls
        answer.finish_reason = piece.finish_reason or ""
    for answer, text, thought in zip(answers, texts, thoughts, strict=True):
        answer.text, answer.reasoning = "".join(text), "".join(thought)
    return answers
