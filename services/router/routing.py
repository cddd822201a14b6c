"""Which worker of a pool gets a prompt: `kv` (default), `least-loaded`, `round-robin`,
`random` (--routing).

`kv` and `least-loaded` pick the lowest cost, in prefill-token equivalents (the time one
prompt token takes to prefill):

    prefill pool:  cost = uncached + REDUNDANT * redundant + queued + BLOCK * used_blocks
    decode pool:   cost = READ * uncached + queued + RUNNING * running + BLOCK * used_blocks
    both (colocated):  the prefill pool's cost + RUNNING * running

    uncached     prompt tokens after the worker's leading cached blocks (KV index, plus
                 blocks this router just sent it that have not been announced yet); with
                 `least-loaded` nothing counts as cached, so only load decides
    queued       prefill tokens waiting on the worker: the larger of its heartbeat and the
                 tokens this router sent it that are not answered yet (fresher)
    redundant    uncached - the fewest uncached tokens any candidate has: prefix tokens
                 another worker already holds. Computing them again delays this prompt
                 (counted in `uncached`) *and* costs the pool that much work it need not
                 have done (and a second copy in cache), which every later prompt waits
                 behind; REDUNDANT prices that, so a prompt leaves the worker holding its
                 prefix only when the queue there costs more than the work it would waste.
                 It is 0 for every worker when no one holds more than the others.
    running      requests decoding on it (each slows every decode step)
    used_blocks  KV blocks referenced by its requests (memory pressure: eviction risk)

Near-ties spread: every worker within max(TIE_TOKENS, TIE_FRACTION * best) of the best
cost is a candidate, and the one with the fewest requests in flight from this router wins,
at random among equals. So many prompts sharing one system prompt fill every worker that
holds it (and the cheapest others) instead of herding onto one.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from services.kv.index import KVIndex
from services.router.workers import WorkerRef

ROUTINGS = ("kv", "least-loaded", "round-robin", "random")


@dataclass(frozen=True, slots=True)
class CostWeights:
    redundant: float = 1.0  # a prefix token computed again though another worker holds it
    read: float = 0.25  # a decode worker's uncached token: read over NIXL, or prefilled
    running: float = 64.0  # a decoding request: about one chunk of prefill per step
    block: float = 0.5  # a referenced KV block
    tie_tokens: float = 64.0
    tie_fraction: float = 0.1


@dataclass(frozen=True, slots=True)
class Choice:
    worker: WorkerRef
    cached_blocks: int  # the prompt's leading blocks the worker holds, as far as we know
    uncached: int  # prompt tokens past those blocks: what it would compute (or read)
    cost: float


class Predicted:
    """Blocks a worker is about to hold: this router sent it the prompt, its KV events
    have not arrived yet. Without this, a burst sharing one prefix sees it nowhere and
    scatters before the first prefill ends. Entries expire on their own."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._blocks: dict[str, dict[int, float]] = {}  # worker -> hash -> expiry
        self._expiries: deque[tuple[float, str, Sequence[int]]] = deque()

    def add(self, worker_id: str, hashes: Sequence[int], ttl_s: float | None = None) -> None:
        expiry = time.monotonic() + (self.ttl_s if ttl_s is None else ttl_s)
        blocks = self._blocks.setdefault(worker_id, {})
        for h in hashes:
            blocks[h] = expiry
        self._expiries.append((expiry, worker_id, hashes))

    def leading(self, worker_id: str, hashes: Sequence[int]) -> int:
        now = time.monotonic()
        self._prune(now)
        blocks = self._blocks.get(worker_id)
        if not blocks:
            return 0
        n = 0
        for h in hashes:
            if blocks.get(h, now) <= now:
                break
            n += 1
        return n

    def forget(self, worker_id: str) -> None:
        self._blocks.pop(worker_id, None)

    def _prune(self, now: float) -> None:
        """Memory bound: drop what has expired (entries are added in expiry order)."""
        while self._expiries and self._expiries[0][0] <= now:
            _, worker_id, hashes = self._expiries.popleft()
            blocks = self._blocks.get(worker_id)
            if blocks is None:
                continue
            for h in hashes:
                if blocks.get(h, now + 1) <= now:  # not renewed by a later prompt
                    del blocks[h]
            if not blocks:
                del self._blocks[worker_id]


class Policy:
    def __init__(
        self,
        routing: str,
        index: KVIndex | None,
        weights: CostWeights | None = None,
        seed: int | None = None,
    ) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"--routing must be one of {ROUTINGS}, got {routing!r}")
        if routing == "kv" and index is None:
            raise ValueError("kv routing needs a KV index")
        self.routing = routing
        self.index = index if routing == "kv" else None
        self.weights = weights or CostWeights()
        self.predicted = Predicted()
        self._rng = random.Random(seed)
        self._turns: dict[str, itertools.count[int]] = {}

    @property
    def uses_cache(self) -> bool:
        return self.index is not None

    def pick(
        self, role: str, candidates: Sequence[WorkerRef], hashes: Sequence[int], prompt_len: int
    ) -> Choice | None:
        if not candidates:
            return None
        if self.routing == "round-robin":
            turn = next(self._turns.setdefault(role, itertools.count()))
            return Choice(candidates[turn % len(candidates)], 0, prompt_len, 0.0)
        if self.routing == "random":
            return Choice(self._rng.choice(list(candidates)), 0, prompt_len, 0.0)
        hits = self._hits(candidates, hashes)
        uncached = {
            w.worker_id: max(0, prompt_len - hits.get(w.worker_id, 0) * w.record.block_size)
            for w in candidates
        }
        fewest = min(uncached.values())
        choices = [
            self._cost(role, w, hits.get(w.worker_id, 0), uncached[w.worker_id], fewest)
            for w in candidates
        ]
        best = min(c.cost for c in choices)
        w = self.weights
        ties = [c for c in choices if c.cost <= best + max(w.tie_tokens, w.tie_fraction * best)]
        least_busy = min(c.worker.in_flight for c in ties)
        return self._rng.choice([c for c in ties if c.worker.in_flight == least_busy])

    def _hits(self, candidates: Sequence[WorkerRef], hashes: Sequence[int]) -> dict[str, int]:
        if self.index is None or not hashes:
            return {}
        hits = self.index.lookup(hashes)
        for ref in candidates:
            predicted = self.predicted.leading(ref.worker_id, hashes)
            if predicted > hits.get(ref.worker_id, 0):
                hits[ref.worker_id] = predicted
        return hits

    def _cost(
        self, role: str, ref: WorkerRef, cached_blocks: int, uncached: int, fewest: int
    ) -> Choice:
        w, rec = self.weights, ref.record
        cost = ref.queued_tokens + w.block * rec.used_blocks
        if role == "decode":
            cost += w.read * uncached
        else:
            cost += uncached + w.redundant * (uncached - fewest)
        if role != "prefill":
            cost += w.running * max(rec.running, ref.in_flight)
        return Choice(ref, cached_blocks, uncached, cost)

    def routed(self, choice: Choice, hashes: Sequence[int]) -> None:
        """The prompt went to `choice`: its blocks will be there soon."""
        if self.index is not None and len(hashes) > choice.cached_blocks:
            self.predicted.add(choice.worker.worker_id, hashes)
