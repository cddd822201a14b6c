"""What the HTTP layer needs from whatever runs the model: token ids in, token deltas out.

The router's HTTP edge (app.py) validates, tokenizes, detokenizes and formats; a Backend
only moves token ids. `dispatch.Dispatcher` is the real one (gRPC to the worker pools).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from engine.request import TopLogprobs
from engine.sampling_params import SamplingParams

# How a request was served (a label of the `tandem_requests_total` metric).
ROUTE_DISAGG = "disaggregated"
ROUTE_LOCAL = "local_prefill"
# prefilled on the decode worker because the prefill pool's queue was the longer wait
ROUTE_LOCAL_QUEUE = "local_prefill_queue"
# prefilled on the decode worker because the prefill pool has no worker (scaled to zero)
ROUTE_LOCAL_NO_POOL = "local_prefill_no_pool"
# prefilled on the decode worker because its prompt's logprobs were asked for (echo): they
# come with the first token of the Decode stream, where the prompt is computed whole
ROUTE_LOCAL_PROMPT_LOGPROBS = "local_prefill_prompt_logprobs"
ROUTE_COLOCATED = "colocated"


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str = ""  # prefix-cache hits only among requests with the same salt


@dataclass(frozen=True, slots=True)
class StartTimes:
    """Where a request's start went on the workers, in seconds; None where its path has
    no such stage. The first token follows queue and prefill; a disaggregated request's
    second token also waits for its KV to reach the decode worker and that worker's first
    step. Each worker reports its own part; `then` joins them."""

    queue_s: float | None = None  # waiting for a place in a worker's batch
    prefill_s: float | None = None  # admitted to the first token
    kv_transfer_s: float | None = None  # at the decode worker until the prompt's KV landed
    first_decode_s: float | None = None  # the KV landed to the decode worker's first token

    def then(self, later: StartTimes) -> StartTimes:
        """These times, with `later`'s for the stages these lack (a resumed request's
        second worker changes nothing its first reported)."""
        return StartTimes(
            *(
                mine if mine is not None else theirs
                for mine, theirs in zip(_times(self), _times(later), strict=True)
            )
        )


def _times(s: StartTimes) -> tuple[float | None, ...]:
    return (s.queue_s, s.prefill_s, s.kv_transfer_s, s.first_decode_s)


@dataclass(slots=True)
class TokenDelta:
    """New tokens of one request. The first delta carries `route` and `num_cached_tokens`."""

    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)  # one per token when asked for
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_cached_tokens: int = 0  # prompt tokens served from a prefix cache
    route: str = ""
    top_logprobs: list[TopLogprobs] = field(default_factory=list)  # one per token when asked
    start: StartTimes | None = None  # on a worker's first delta
    # prompt tokens 1.. (params.prompt_logprobs), on the delta of the first token
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[TopLogprobs] = field(default_factory=list)


class BackendError(Exception):
    """A failure the client should see, with the HTTP status it maps to (and, for a
    client that should simply come back, the seconds its Retry-After header says)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "server_error",
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.retry_after_s = retry_after_s


class Backend(Protocol):
    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        """Stream a request's tokens. Closing the iterator early aborts the request
        everywhere it runs and frees its blocks. Raises BackendError."""
        ...

    async def ready(self) -> bool:
        """True when a request sent now could be served."""
        ...
