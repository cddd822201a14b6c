"""What the engine reports: each step's outputs, and snapshots of its load and KV cache.

Token ids only: the text belongs to whoever shows it to a user (engine/detokenize.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from engine.request import FinishReason, StartTiming, TopLogprobs


@dataclass(slots=True)
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    finished: bool  # nothing more comes from this engine (ended, or held for a peer)
    finish_reason: FinishReason | None  # None while running, and when held
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    new_logprobs: list[float] = field(default_factory=list)
    new_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    held: bool = False  # prefill role: prompt done, blocks held for the decode worker
    start: StartTiming | None = None  # on the output of the first token sampled here
    # with the first token, where asked (params.prompt_logprobs): prompt tokens 1..
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[TopLogprobs] = field(default_factory=list)

    def extend(self, later: RequestOutput) -> RequestOutput:
        """This output followed by `later`, the same request's next one, as one: every
        token and logprob, and the later state. Changes and returns self."""
        self.new_token_ids += later.new_token_ids
        self.new_logprobs += later.new_logprobs
        self.new_top_logprobs += later.new_top_logprobs
        self.finished, self.finish_reason = later.finished, later.finish_reason
        self.held = later.held
        self.start = self.start or later.start
        self.prompt_logprobs = self.prompt_logprobs or later.prompt_logprobs
        self.prompt_top_logprobs = self.prompt_top_logprobs or later.prompt_top_logprobs
        self.num_cached_tokens = later.num_cached_tokens
        self.num_output_tokens = later.num_output_tokens
        return self


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """How busy the engine is, as of one moment between steps."""

    running: int  # running, and admitted waiting for remote KV
    waiting: int
    queued_prefill_tokens: int  # prompt tokens not computed yet, queued or mid-prefill
    num_blocks: int
    free_blocks: int
    cached_blocks: int
    held_blocks: int  # blocks of prompts held for a peer to read (prefill role)
    idle: bool  # no request anywhere, every block free
    # the 90th percentile of the tokens the running requests have output so far: a floor
    # under what they will output, which shows long answers before any has finished
    running_output_p90: int = 0

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks


@dataclass(frozen=True, slots=True)
class AdmissionCounts:
    """Since the engine started: preemptions, and the prefix cache's prompt tokens looked
    up and found at first admissions (vLLM's prefix_cache_queries and _hits)."""

    preemptions: int = 0
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0


@dataclass(slots=True)
class StepTotals:
    """What the engine has computed since it started, and how long that took: counters that
    only grow, so that a reader (the autoscaler) learns the engine's speed from the change
    between two reads, whatever happened in between. A step with a prompt chunk in it
    counts as prefill; a step of single tokens only, as decode."""

    prefill_steps: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (not those read from the cache)
    prefill_busy_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0  # tokens of decode steps: each step adds its batch size
    decode_busy_s: float = 0.0

    def add(self, chunk_tokens: list[int], took_s: float) -> None:
        if all(n == 1 for n in chunk_tokens):
            self.decode_steps += 1
            self.decode_tokens += len(chunk_tokens)
            self.decode_busy_s += took_s
        else:
            self.prefill_steps += 1
            self.prefill_tokens += sum(n for n in chunk_tokens if n > 1)
            self.prefill_busy_s += took_s

    def copy(self) -> StepTotals:
        return replace(self)


class RequestLengths:
    """The prompt and output lengths of the last `window` requests this engine finished,
    and their medians and 90th percentiles: the autoscaler sizes for the tail (a pool whose
    workers fit the mean request may have no room for a long one), and means hide it."""

    def __init__(self, window: int = 256) -> None:
        self._prompts: deque[int] = deque(maxlen=window)
        self._outputs: deque[int] = deque(maxlen=window)
        self._at_limit: deque[bool] = deque(maxlen=window)
        self._cached: Lengths | None = Lengths()

    def add(self, prompt_tokens: int, output_tokens: int, at_limit: bool = False) -> None:
        """`at_limit`: the answer ended at its max_tokens (not at a stop)."""
        self._prompts.append(prompt_tokens)
        self._outputs.append(output_tokens)
        self._at_limit.append(at_limit)
        self._cached = None

    def percentiles(self) -> Lengths:
        """Read with every stats snapshot (each few ms): computed once per change."""
        if self._cached is None:
            p50, p90 = _percentiles(self._prompts)
            o50, o90 = _percentiles(self._outputs)
            at_limit = sum(self._at_limit) / len(self._at_limit) if self._at_limit else 0.0
            self._cached = Lengths(p50, p90, o50, o90, at_limit)
        return self._cached


@dataclass(frozen=True, slots=True)
class Lengths:
    """Tokens; all 0 before the first request finished."""

    prompt_p50: int = 0
    prompt_p90: int = 0
    output_p50: int = 0
    output_p90: int = 0
    # of them, the share whose answers ended at their max_tokens: where nearly all do, what
    # arriving requests ask for is how long they will answer (the autoscaler's forecast)
    at_limit: float = 0.0


def _percentiles(values: Iterable[int]) -> tuple[int, int]:
    """The median and the 90th percentile (nearest rank); 0, 0 of none."""
    ranked = sorted(values)
    if not ranked:
        return 0, 0
    n = len(ranked)
    return ranked[math.ceil(0.5 * n) - 1], ranked[math.ceil(0.9 * n) - 1]


def p90(values: Iterable[int]) -> int:
    """The 90th percentile (nearest rank); 0 of none."""
    return _percentiles(values)[1]


@dataclass(frozen=True, slots=True)
class KVSnapshot:
    """Every cached block hash, and the sequence number of the last KV event they reflect."""

    seq: int
    block_hashes: list[int]
