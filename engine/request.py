"""One request's state as the scheduler sees it: integers, no tensors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.hashing import chain_hashes, salted_seed
from engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    # Decode role: blocks are allocated and the prompt's KV is being written by a peer.
    WAITING_FOR_REMOTE_KV = "waiting_for_remote_kv"
    RUNNING = "running"
    # Prefill role: the prompt is done and its first token sampled; no finish reason (the
    # request goes on elsewhere), blocks held until the peer has read them.
    HELD = "held"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    """Why a request ended. The value is what the wire and the HTTP API carry."""

    STOP = "stop"  # an EOS or stop token, or (found by whoever owns the text) a stop string
    LENGTH = "length"  # max_tokens, or the model's context
    ABORT = "abort"  # cancelled by the caller


# The k likeliest tokens at one position and their logprobs, likeliest first.
TopLogprobs = tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class StartTiming:
    """How one engine spent a request's start, in seconds: queued until admitted; then,
    for a prompt whose KV a peer computed, waiting for that KV to land; then computing up
    to the first token this engine sampled (the prompt's rest, or one decode step)."""

    queue_s: float
    kv_wait_s: float
    compute_s: float


@dataclass(slots=True)
class SampledToken:
    """One request's sample of one step."""

    token_id: int
    logprob: float | None = None  # None unless the request asked for logprobs
    top: TopLogprobs = ()  # empty unless it asked for top_logprobs


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    remote_prefill: bool = False  # KV for the prompt comes from another worker
    cache_salt: str = ""  # shares cached blocks only with requests of the same salt
    status: Status = Status.WAITING
    token_ids: list[int] = field(default_factory=list)  # prompt + output, grows each step
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of full blocks of token_ids
    num_committed_blocks: int = 0  # leading blocks already registered in the prefix cache
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    # prompt tokens 1.. given those before (params.prompt_logprobs), as their rows are run
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    # time.monotonic() of its start's stages on this engine (the first admission, the KV
    # landing, the first sample), and their StartTiming until an output has reported it
    admitted_at: float | None = None
    kv_ready_at: float | None = None
    first_sampled_at: float | None = None
    start: StartTiming | None = None

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def held(self) -> bool:
        return self.status is Status.HELD

    def sampled(self, now: float) -> None:
        """A token was sampled for it here: the first one closes its start."""
        if self.first_sampled_at is not None:
            return
        self.first_sampled_at = now
        admitted = self.admitted_at if self.admitted_at is not None else now
        computing_from = self.kv_ready_at if self.kv_ready_at is not None else admitted
        self.start = StartTiming(
            queue_s=admitted - self.arrival_time,
            kv_wait_s=computing_from - admitted,
            compute_s=now - computing_from,
        )

    def update_hashes(self, block_size: int) -> list[int]:
        """Extend `block_hashes` to cover every full block of `token_ids`."""
        parent = self.block_hashes[-1] if self.block_hashes else salted_seed(self.cache_salt)
        self.block_hashes += chain_hashes(
            self.token_ids, block_size, parent=parent, start_block=len(self.block_hashes)
        )
        return self.block_hashes
