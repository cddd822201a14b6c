"""How much work the router accepts: overload is answered at once, not queued into collapse.

A request holds a place in its serving pool (decode, or `both` when colocated) from the
moment it is accepted until its stream ends, its prefill included. A pool's places:

    sum over its routable workers of  max_num_seqs x (1 + queue_per_seq)
                                      (a full batch running, and queue_per_seq times as
                                       many waiting: the default 1.0 doubles the batch)

A request that finds the pool full gets 429 with Retry-After at once; one that finds no
routable worker at all, 503 with Retry-After. Accepted requests are then never starved by
a flood behind them, and a client (or a load balancer in front of several routers) hears
"come back later" in milliseconds instead of after minutes in a queue.

Each router counts only its own requests: with several routers, give each its share
(`--queue-per-seq`), or put the bound where the load balancer is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from services.router.backend import BackendError
from services.router.workers import WorkerRef

DEFAULT_QUEUE_PER_SEQ = 1.0
RETRY_AFTER_S = 1  # a decode step is tens of milliseconds: places free up within a second
UNKNOWN_MAX_NUM_SEQS = 64  # a record without the field (an older worker): the engine default


class Admission:
    def __init__(self, queue_per_seq: float = DEFAULT_QUEUE_PER_SEQ) -> None:
        """`queue_per_seq` < 0 turns admission off (every request is accepted)."""
        self.queue_per_seq = queue_per_seq
        self.held: dict[str, int] = {}  # places taken, by pool

    def places(self, workers: Sequence[WorkerRef]) -> int:
        per_seq = 1.0 + self.queue_per_seq
        seqs = (w.record.max_num_seqs or UNKNOWN_MAX_NUM_SEQS for w in workers)
        return sum(max(1, int(n * per_seq)) for n in seqs)

    @contextmanager
    def place(self, pool: str, workers: Sequence[WorkerRef]) -> Iterator[None]:
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
        self.held[pool] = held + 1
        try:
            yield
        finally:
            self.held[pool] -= 1
