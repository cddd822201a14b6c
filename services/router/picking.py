"""Which worker takes a request: the prompt's block hashes (for kv routing), the routing
policy's pick among the workers that may take it, and what each pick is recorded as (the
policy's own bookkeeping, the router's per-worker route counts). The per-request flow
(dispatch.py) asks here each time it needs a worker: first, on a retry, on a resume."""

from __future__ import annotations

from collections.abc import Sequence

from engine.hashing import chain_hashes, salted_seed
from services.router.backend import BackendError
from services.router.cluster_view import ClusterView
from services.router.metrics import RouterMetrics
from services.router.routing import Choice, Policy
from services.router.workers import WorkerRef


class Picker:
    def __init__(self, cluster: ClusterView, policy: Policy, metrics: RouterMetrics) -> None:
        self.cluster, self.policy, self.metrics = cluster, policy, metrics

    def hashes(self, prompt: list[int], salt: str) -> list[int]:
        """The prompt's chained block hashes, as the workers compute them (kv routing only).
        A pool shares one block size; a worker with another one simply gets no hits."""
        records = self.cluster.records()
        if not self.policy.uses_cache or not records:
            return []
        return chain_hashes(prompt, records[0].block_size, parent=salted_seed(salt))

    def pick(self, role: str, prompt: list[int], hashes: list[int]) -> Choice:
        """A worker serving `role`, or a 503 when none is available."""
        choice = self.choose(role, prompt, hashes)
        if choice is None:
            raise BackendError(503, f"no {role} worker is available", "service_unavailable")
        return choice

    def choose(
        self,
        role: str,
        prompt: list[int],
        hashes: list[int],
        exclude: Sequence[str] = (),
        among: Sequence[WorkerRef] | None = None,
    ) -> Choice | None:
        """`among`: the workers to pick from (default: every one serving `role`)."""
        pool = self.cluster.serving(role) if among is None else among
        candidates = [w for w in pool if w.worker_id not in exclude]
        choice = self.policy.pick(role, candidates, hashes, len(prompt))
        if choice is not None:
            self.policy.routed(choice, hashes)
            self.metrics.record_route(role, choice.worker.worker_id, choice.cached_blocks)
        return choice
