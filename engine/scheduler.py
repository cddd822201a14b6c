"""Continuous batching with a token budget: two verbs, `schedule()` and `update()`.

Each step every request needs `num_tokens - num_computed_tokens` more tokens computed: a
whole (or chunked) prompt for a new request, exactly one for a decoding request. A step
spends `max_num_batched_tokens` on, in this order:

  1. running requests that decode (one token each): a long prefill never starves them;
  2. running requests still in the middle of a chunked prefill;
  3. waiting requests, first come first served, with their prefix-cache hits skipped.

When a running request needs a block and none is free, the most recently admitted running
request is preempted: its blocks are released (they stay in the prefix cache) and it
goes back to the head of the queue to be recomputed later.

Roles: a `prefill` worker stops each request after its first token and *holds* its blocks
until `release_held()`; a `decode` worker admits `remote_prefill` requests into
WAITING_FOR_REMOTE_KV with blocks allocated, and runs them once `remote_kv_ready()`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.block_pool import BlockPool
from engine.request import FinishReason, Request, SampledToken, Status


@dataclass(slots=True)
class ScheduledChunk:
    request: Request
    start: int  # first token position computed this step
    num_tokens: int
    samples: bool  # the chunk reaches the last known token, so a token is sampled

    @property
    def prompt_rows(self) -> range:
        """The positions of this chunk whose logits score the next prompt token, for a
        request that asked for its prompt's logprobs; empty for all others."""
        req = self.request
        if req.params.prompt_logprobs is None:
            return range(0)
        return range(self.start, min(self.start + self.num_tokens, req.num_prompt_tokens - 1))


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
        enable_prefix_caching: bool = True,
        role: str = "both",
    ) -> None:
        self.pool = pool
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.enable_prefix_caching = enable_prefix_caching
        self.role = role
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: the last is preempted first
        self.remote: dict[str, Request] = {}  # WAITING_FOR_REMOTE_KV
        self.held: dict[str, Request] = {}  # HELD (prefill role)
        self.num_preemptions = 0
        # the prefix cache at first admissions: prompt tokens looked up, and found
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0

    # ---- bookkeeping ---------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.remote)

    def num_active(self) -> int:
        return len(self.running) + len(self.remote)

    def queued_prefill_tokens(self) -> int:
        """Prompt tokens still to compute: queued, or left of a chunked prefill."""
        queued = sum(r.num_tokens - r.num_computed_tokens for r in self.waiting)
        return queued + sum(
            r.num_tokens - r.num_computed_tokens
            for r in self.running
            if r.num_tokens - r.num_computed_tokens > 1
        )

    # ---- schedule ------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        decoding = [r for r in self.running if r.num_tokens - r.num_computed_tokens == 1]
        prefilling = [r for r in self.running if r.num_tokens - r.num_computed_tokens > 1]
        for req in decoding + prefilling:
            # Recomputed each time: a preemption below withdraws its victim's chunk.
            budget = self.max_num_batched_tokens - out.num_tokens
            if budget == 0:
                break
            if req.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._grow(req, req.num_computed_tokens + n, out):
                continue
            out.chunks.append(self._chunk(req, n))
        if not out.preempted:  # memory is short: admit nothing new (nor the victims) now
            self._admit_waiting(out, self.max_num_batched_tokens - out.num_tokens)
        return out

    def _chunk(self, req: Request, n: int) -> ScheduledChunk:
        start = req.num_computed_tokens
        return ScheduledChunk(req, start, n, samples=start + n == req.num_tokens)

    def _grow(self, req: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Give `req` blocks for `num_tokens`, preempting later requests if needed."""
        need = _cdiv(num_tokens, self.block_size) - len(req.block_ids)
        while need > self.pool.num_free_blocks:
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is req:
                return False
        if need > 0:
            req.block_ids += self.pool.allocate(need)
        return True

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.pool.release(req.block_ids)
        req.block_ids = []
        req.num_computed_tokens = 0
        req.num_committed_blocks = 0
        req.status = Status.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        out.chunks = [c for c in out.chunks if c.request is not req]
        out.preempted.append(req.request_id)

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and self.num_active() < self.max_num_seqs:
            req = self.waiting[0]
            hits = self._prefix_hits(req)
            cached = len(hits) * self.block_size
            if req.remote_prefill:
                # Blocks for the whole prompt, which the peer writes; nothing computed yet.
                n, covered = 0, req.num_prompt_tokens
            else:
                n = min(req.num_tokens - cached, budget)
                if n < req.num_tokens - cached and not self.enable_chunked_prefill:
                    break
                covered = cached + n
            need = _cdiv(covered, self.block_size) - len(hits)
            if need > self.pool.free_after_acquire(hits):
                break  # never preempt a running request to admit a new one
            self.waiting.popleft()
            self.pool.acquire(hits)
            req.block_ids = hits + self.pool.allocate(need)
            req.num_computed_tokens = cached
            req.num_committed_blocks = len(hits)
            if req.num_preemptions == 0:
                req.num_cached_tokens = cached
                req.admitted_at = time.monotonic()
                self.prefix_queried_tokens += req.num_prompt_tokens
                self.prefix_hit_tokens += cached
            if req.remote_prefill:
                req.status = Status.WAITING_FOR_REMOTE_KV
                self.remote[req.request_id] = req
                continue
            req.status = Status.RUNNING
            self.running.append(req)
            out.chunks.append(self._chunk(req, n))
            budget -= n

    def _prefix_hits(self, req: Request) -> list[int]:
        # A prompt whose logprobs are asked for is run whole: a cached block has no logits.
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None:
            return []
        hashes = req.update_hashes(self.block_size)
        hits = self.pool.lookup_prefix(hashes)
        # The last token must be computed to get logits, so a fully cached sequence
        # recomputes its last block (never writing into a shared one).
        if len(hits) * self.block_size >= req.num_tokens:
            hits = hits[:-1]
        return hits

    # ---- update --------------------------------------------------------------------
    def update(self, out: SchedulerOutput, sampled: Mapping[str, SampledToken]) -> list[Request]:
        """Advance computed counts, cache full blocks, append sampled tokens.

        Returns the requests that got a new token this step. Whether that token ends one is
        the caller's call (`finish()`): stops depend on text and params, not on blocks. On a
        prefill worker a request is HELD once it has its first token (a later `finish()`
        still ends it there, e.g. when that token already stops it).
        """
        got: list[Request] = []
        now = time.monotonic()
        for chunk in out.chunks:
            req = chunk.request
            req.num_computed_tokens += chunk.num_tokens
            self._commit_full_blocks(req)
            if not chunk.samples:
                continue
            s = sampled[req.request_id]
            req.token_ids.append(s.token_id)
            req.sampled(now)
            if s.logprob is not None:
                req.logprobs.append(s.logprob)
            if s.top:
                req.top_logprobs.append(s.top)
            got.append(req)
            if self.role == "prefill":
                self._hold(req)
        return got

    def _commit_full_blocks(self, req: Request) -> None:
        if not self.enable_prefix_caching:
            return
        full = req.num_computed_tokens // self.block_size
        if full <= req.num_committed_blocks:
            return
        hashes = req.update_hashes(self.block_size)
        bs = self.block_size
        for i in range(req.num_committed_blocks, full):
            parent = hashes[i - 1] if i > 0 else None
            self.pool.commit(
                req.block_ids[i], hashes[i], parent, req.token_ids[i * bs : (i + 1) * bs]
            )
        req.num_committed_blocks = full

    # ---- endings -------------------------------------------------------------------
    def _hold(self, req: Request) -> None:
        """Prefill role: the prompt is done; keep its blocks for the peer to read."""
        self._detach(req)
        req.status = Status.HELD
        self.held[req.request_id] = req

    def finish(self, req: Request, reason: FinishReason) -> None:
        """End a request wherever it is (a held one included) and free its blocks."""
        self._detach(req)
        req.finish_reason = reason
        req.status = Status.FINISHED
        self.pool.release(req.block_ids)
        req.block_ids = []

    def _detach(self, req: Request) -> None:
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req.status is Status.WAITING:
            self.waiting.remove(req)
        elif req.status is Status.WAITING_FOR_REMOTE_KV:
            del self.remote[req.request_id]
        elif req.status is Status.HELD:
            del self.held[req.request_id]

    def release_held(self, request_id: str) -> bool:
        """The peer has the KV (or gave up): free a held request's blocks."""
        req = self.held.pop(request_id, None)
        if req is None:
            return False
        req.status = Status.FINISHED
        self.pool.release(req.block_ids)
        req.block_ids = []
        return True

    def remote_kv_ready(self, request_id: str, first_token: int | None, kv_valid: bool) -> Request:
        """The prompt's KV has landed in `block_ids`; join the batch.

        `first_token` is the token the prefill worker sampled and the client already has,
        so it is appended, never sampled again. With `kv_valid` False (the read failed, or
        may have finished after the peer's lease ran out) the blocks past the local prefix
        hits are garbage and the rest of the prompt (and the first token) is recomputed
        here; without a `first_token` the recompute samples it.
        """
        req = self.remote.pop(request_id)
        req.kv_ready_at = time.monotonic()
        req.status = Status.RUNNING
        req.remote_prefill = False  # from here on (a preemption included) it computes locally
        self.running.append(req)
        if first_token is not None:
            req.token_ids.append(first_token)
        if kv_valid and first_token is not None:
            req.num_computed_tokens = req.num_prompt_tokens
            self._commit_full_blocks(req)
        return req
