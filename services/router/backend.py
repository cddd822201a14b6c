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
ROUTE_COLOCATED = "colocated"


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str = ""  # prefix-cache hits only among requests with the same salt


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
