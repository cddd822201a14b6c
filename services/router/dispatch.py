"""The real Backend: each request goes to a prefill worker and a decode worker over gRPC.

    disaggregated:  Prefill(prefill worker) -> first token to the client at once
                    Decode(decode worker, KV handle) -> the rest, streamed
    local prefill:  Decode(decode worker, no handle): prompts of at most
                    `local_prefill_tokens` tokens are cheaper to compute than to move;
                    and with `balance_prefill`, any prompt the decode worker would start
                    sooner than the prefill pool (its queued prefill tokens plus this
                    prompt's are fewer than the shortest prefill worker's queue), so a
                    burst of prompts keeps both pools computing instead of queueing on one
    colocated:      Decode(a `both` worker, no handle), for comparison

A prefill worker that fails or times out is not hidden: the request is prefilled on the
decode worker, counted in `tandem_prefill_fallbacks_total{reason}` and logged.
A client that goes away (the iterator is closed early) aborts the request on both workers.

Which workers: services/router/routing.py (--routing), among those the ClusterView
(cluster_view.py) keeps current. With `kv` the decode worker is chosen first, and the
local-vs-remote decision counts only the prompt tokens *it* does not hold: a conversation
that comes back to the worker holding its history prefills its new turn there. Workers
are spoken to through their WorkerClient (worker_client.py): no protobuf here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from engine.hashing import chain_hashes
from services.router.backend import (
    ROUTE_COLOCATED,
    ROUTE_DISAGG,
    ROUTE_LOCAL,
    ROUTE_LOCAL_QUEUE,
    BackendError,
    GenerateRequest,
    TokenDelta,
)
from services.router.cluster_view import ClusterView
from services.router.metrics import RouterMetrics
from services.router.routing import ROUTINGS, Choice, Policy
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply

log = logging.getLogger(__name__)
MODES = ("disagg", "colocated")


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    mode: str = "disagg"
    routing: str = "kv"  # see services/router/routing.py
    # Prompts this short are prefilled on the decode worker: moving their few blocks costs
    # more than computing them (conditional disaggregation).
    local_prefill_tokens: int = 64
    # Prefill on the decode worker when it would start the prompt sooner than any prefill
    # worker (Dynamo's disaggregated router decides on the prefill queue likewise).
    balance_prefill: bool = True
    prefill_timeout_s: float = 120.0
    refresh_s: float = 0.5  # how often the registry is read

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.local_prefill_tokens < 0:
            raise ValueError("local_prefill_tokens must be >= 0")


class Dispatcher:
    def __init__(
        self, cluster: ClusterView, config: DispatchConfig, metrics: RouterMetrics, policy: Policy
    ) -> None:
        """kv routing needs `policy`'s KV index kept true by `cluster`'s KV feed."""
        self.cluster = cluster
        self.config = config
        self.metrics = metrics
        self.policy = policy
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.cluster.start()

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)  # aborts in flight
        await self.cluster.close()

    async def ready(self) -> bool:
        if self.config.mode == "colocated":
            return bool(self.cluster.serving("both"))
        return bool(self.cluster.serving("decode"))

    # ---- requests --------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        hashes = self._hashes(request.prompt_token_ids)
        if self.config.mode == "colocated":
            worker = self._pick("both", request, hashes).worker
            async for delta in self._decode(worker, request, None, ROUTE_COLOCATED):
                yield delta
            return
        decode = self._pick("decode", request, hashes)
        route = self._local_route(decode)
        if route is not None:
            async for delta in self._decode(decode.worker, request, None, route, decode.uncached):
                yield delta
            return
        async for delta in self._disaggregated(request, decode.worker, hashes):
            yield delta

    def _local_route(self, decode: Choice) -> str | None:
        """Why the decode worker prefills this prompt itself, or None to prefill remotely."""
        if decode.uncached <= self.config.local_prefill_tokens:
            return ROUTE_LOCAL
        if not self.config.balance_prefill:
            return None
        # the shortest prefill queue in the pool (read only: picking would take a turn)
        shortest = min((w.queued_tokens for w in self.cluster.serving("prefill")), default=None)
        if shortest is None:  # no prefill worker: _disaggregated falls back, logged and counted
            return None
        sooner = decode.worker.queued_tokens + decode.uncached < shortest
        return ROUTE_LOCAL_QUEUE if sooner else None

    def _hashes(self, prompt: list[int]) -> list[int]:
        """The prompt's chained block hashes, as the workers compute them (kv routing only).
        A pool shares one block size; a worker with another one simply gets no hits."""
        records = self.cluster.records()
        if not self.policy.uses_cache or not records:
            return []
        return chain_hashes(prompt, records[0].block_size)

    def _pick(self, role: str, request: GenerateRequest, hashes: list[int]) -> Choice:
        choice = self._choose(role, request, hashes)
        if choice is None:
            raise BackendError(503, f"no {role} worker is available", "service_unavailable")
        return choice

    def _choose(self, role: str, request: GenerateRequest, hashes: list[int]) -> Choice | None:
        prompt_len = len(request.prompt_token_ids)
        choice = self.policy.pick(role, self.cluster.serving(role), hashes, prompt_len)
        if choice is not None:
            self.policy.routed(choice, hashes)
            self.metrics.record_route(role, choice.worker.worker_id, choice.cached_blocks)
        return choice

    async def _disaggregated(
        self, request: GenerateRequest, decode: WorkerRef, hashes: list[int]
    ) -> AsyncIterator[TokenDelta]:
        chosen = self._choose("prefill", request, hashes)
        reply = None
        if chosen is None:
            self._fell_back(request, "no_prefill_worker", "no prefill worker is registered")
        else:
            reply = await self._prefill(chosen.worker, request, chosen.uncached)
        if reply is None:  # counted and logged; the request still runs
            async for delta in self._decode(decode, request, None, ROUTE_LOCAL):
                yield delta
            return
        assert chosen is not None
        done = reply.finish_reason is not None
        first = TokenDelta(
            [reply.first_token],
            [reply.first_logprob] if reply.first_logprob is not None else [],
            finished=done,
            finish_reason=reply.finish_reason,
            num_cached_tokens=reply.num_cached_tokens,
            route=ROUTE_DISAGG,
        )
        if done:
            yield first
            return
        released = False
        try:
            yield first
            async for delta in self._decode(decode, request, reply, ROUTE_DISAGG):
                released = True  # the decode worker read (or gave up on) the KV
                yield delta
        finally:
            if not released:  # nobody will read the held blocks: free them now
                self._later(self._abort(chosen.worker, request.request_id))

    async def _prefill(
        self, ref: WorkerRef, request: GenerateRequest, uncached: int
    ) -> PrefillReply | None:
        call = PrefillCall(request.request_id, request.prompt_token_ids, request.params)
        with self.cluster.workers.busy(ref, uncached):
            try:
                return await ref.client.prefill(call, self.config.prefill_timeout_s)
            except WorkerError as e:
                _raise_client_error(e)
                reason = e.code
        self._fell_back(request, reason, f"prefill on {ref.worker_id} failed ({reason})")
        self._later(self._abort(ref, request.request_id))
        return None

    def _fell_back(self, request: GenerateRequest, reason: str, why: str) -> None:
        """Never silent: every request that loses its remote prefill is logged and counted."""
        log.warning("%s: %s; prefilling on the decode worker instead", request.request_id, why)
        self.metrics.record_prefill_fallback(reason)

    async def _decode(
        self,
        ref: WorkerRef,
        request: GenerateRequest,
        prefill: PrefillReply | None,
        route: str,
        local_tokens: int = 0,
    ) -> AsyncIterator[TokenDelta]:
        """`local_tokens`: prompt tokens the decode worker prefills itself, counted as queued
        on it until its first token arrives (as a prefill worker's are until its reply)."""
        call = DecodeCall(
            request.request_id,
            request.prompt_token_ids,
            request.params,
            handle=prefill.handle if prefill is not None else None,
            first_token=prefill.first_token if prefill is not None else None,
        )
        first = True
        # Cached tokens are prompt tokens nobody computed: with a remote prefill that is
        # the prefill worker's count (the decode worker's own hits only spare reads),
        # unless the read failed and the decode worker recomputed the prompt.
        local = prefill is None
        # aclosing: a client gone mid-stream cancels the call now, and the worker aborts.
        with self.cluster.workers.busy(ref, local_tokens) as prefilling:
            try:
                async with aclosing(ref.client.decode(call)) as stream:
                    async for chunk in stream:
                        if first:
                            prefilling.done()
                        if first and prefill is not None:
                            self._account_transfer(chunk, prefill, request.request_id)
                            local = chunk.kv_recomputed
                        yield TokenDelta(
                            chunk.token_ids,
                            chunk.logprobs,
                            finished=chunk.finished,
                            finish_reason=chunk.finish_reason,
                            num_cached_tokens=chunk.num_cached_tokens if local else 0,
                            route=route if first else "",
                        )
                        first = False
            except WorkerError as e:
                _raise_client_error(e)
                raise BackendError(
                    502, f"decode worker {ref.worker_id} failed: {e.details}"
                ) from None

    def _account_transfer(self, chunk: DecodeReply, prefill: PrefillReply, request_id: str) -> None:
        if chunk.kv_recomputed:
            self.metrics.record_recompute()
            # The read failed or came too late; the prefill worker may still hold the
            # blocks until its lease ends: release them now.
            assert prefill.handle is not None
            ref = self.cluster.get(prefill.handle.worker_id)
            if ref is not None:
                self._later(self._abort(ref, request_id))
            return
        self.metrics.record_transfer(chunk.kv_bytes_read, chunk.kv_read_seconds)

    async def _abort(self, ref: WorkerRef, request_id: str) -> None:
        try:
            await ref.client.abort(request_id, timeout_s=5)
        except WorkerError as e:
            log.warning("abort of %s on %s failed: %s", request_id, ref.worker_id, e.details)

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, but keep a reference until done (and wait for it on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _raise_client_error(e: WorkerError) -> None:
    """The worker rejected the request itself: the client's fault, say so."""
    if e.rejected:
        raise BackendError(400, e.details or "invalid request", "invalid_request_error")
