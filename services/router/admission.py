"""How much work the router accepts: overload is answered at once, not queued into collapse.

A request holds a place in its serving pool (decode, or `both` when colocated) from the
moment it is accepted until its stream ends, its prefill included. A pool's places:

    sum over its routable workers of  max_num_seqs x (1 + queue_per_seq)
                                      (a full batch running, and queue_per_seq times as
                                       many waiting: the default 1.0 doubles the batch)

and, counted in prompt tokens from its acceptance to its first token (requests alike in
number are not alike in prefill work: one 100k-token prompt is 400 short ones):

    prompt tokens waiting  <=  PREFILL_BACKLOG_S x the prefill pool's measured tokens/s
                               (unbounded until a prefill has been measured; one request
                                is always let in, however long its prompt)

A request that finds the pool full gets 429 with Retry-After at once; one that finds no
routable worker at all, 503 with Retry-After. Accepted requests are then never starved by
a flood behind them, and a client (or a load balancer in front of several routers) hears
"come back later" in milliseconds instead of after minutes in a queue.

Each router counts only its own requests: with several routers, give each its share
(`--queue-per-seq`), or put the bound where the load balancer is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from services.router.backend import BackendError
from services.router.workers import WorkerRef

DEFAULT_QUEUE_PER_SEQ = 1.0
RETRY_AFTER_S = 1  # a decode step is tens of milliseconds: places free up within a second
UNKNOWN_MAX_NUM_SEQS = 64  # a record without the field (an older worker): the engine default
# Seconds of prefill work the router takes on: a prompt accepted behind this much waits
# about that long for its first token, which is when a client is better told to come back.
PREFILL_BACKLOG_S = 30.0


class Place:
    """A request's place; its prompt tokens stop counting once it has its first token."""

    def __init__(self, admission: Admission, prompt_tokens: int) -> None:
        self._admission, self._tokens = admission, prompt_tokens

    def prefilled(self) -> None:
        self._admission.prompt_tokens -= self._tokens
        self._tokens = 0


class Admission:
    def __init__(
        self,
        queue_per_seq: float = DEFAULT_QUEUE_PER_SEQ,
        prefill_rate: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`queue_per_seq` < 0 turns admission off (every request is accepted).
        `prefill_rate()`: the prefill pool's measured tokens/s, None until measured."""
        self.queue_per_seq = queue_per_seq
        self.prefill_rate = prefill_rate
        self.held: dict[str, int] = {}  # places taken, by pool
        self.prompt_tokens = 0  # of accepted requests without their first token yet

    def places(self, workers: Sequence[WorkerRef]) -> int:
        per_seq = 1.0 + self.queue_per_seq
        seqs = (w.record.max_num_seqs or UNKNOWN_MAX_NUM_SEQS for w in workers)
        return sum(max(1, int(n * per_seq)) for n in seqs)

    def prompt_limit(self) -> float | None:
        rate = self.prefill_rate()
        if self.queue_per_seq < 0 or rate is None:
            return None
        return PREFILL_BACKLOG_S * rate

    @contextmanager
    def place(
        self, pool: str, workers: Sequence[WorkerRef], prompt_tokens: int = 0
    ) -> Iterator[Place]:
        """Hold a place in `pool` (served by `workers`, the routable ones) while the block
        runs, or raise the 503 / 429 that says why there is none."""
        if not workers:
            raise BackendError(
                503, f"no {pool} worker is available", "service_unavailable", RETRY_AFTER_S
            )
        held = self.held.get(pool, 0)
        if self.queue_per_seq >= 0 and held >= self.places(workers):
            raise BackendError(
                429,
                f"The server is at capacity ({held} requests in progress); retry shortly.",
                "overloaded",
                RETRY_AFTER_S,
            )
        limit = self.prompt_limit()
        if limit is not None and self.prompt_tokens and self.prompt_tokens + prompt_tokens > limit:
            raise BackendError(
                429,
                f"The server has {self.prompt_tokens} prompt tokens waiting to be computed; "
                "retry shortly.",
                "overloaded",
                RETRY_AFTER_S,
            )
        self.held[pool] = held + 1
        self.prompt_tokens += prompt_tokens
        place = Place(self, prompt_tokens)
        try:
            yield place
        finally:
            self.held[pool] -= 1
            place.prefilled()
