"""The real Backend: each request goes to a prefill worker and a decode worker over gRPC.

    disaggregated:  Prefill(prefill worker) -> first token to the client at once
                    Decode(decode worker, KV handle) -> the rest, streamed
    local prefill:  Decode(decode worker, no handle): prompts of at most
                    `local_prefill_tokens` tokens are cheaper to compute than to move
    colocated:      Decode(a `both` worker, no handle), for comparison

A prefill worker that fails or times out is not hidden: the request is prefilled on the
decode worker, counted in `tandem_prefill_fallbacks_total{reason}` and logged.
A client that goes away (the iterator is closed early) aborts the request on both workers.

Which workers: services/router/routing.py (--routing). With `kv` the decode worker is
chosen first, and the local-vs-remote decision counts only the prompt tokens *it* does
not hold: a conversation that comes back to the worker holding its history prefills its
new turn there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from engine.hashing import chain_hashes
from services.kv.feed import KVFeed
from services.pb import worker_pb2
from services.router.backend import (
    ROUTE_COLOCATED,
    ROUTE_DISAGG,
    ROUTE_LOCAL,
    BackendError,
    GenerateRequest,
    TokenDelta,
)
from services.router.metrics import RouterMetrics
from services.router.routing import ROUTINGS, Choice, Policy
from services.router.workers import WorkerRef, WorkerSet
from services.wire import params_to_pb

log = logging.getLogger(__name__)
MODES = ("disagg", "colocated")


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    mode: str = "disagg"
    routing: str = "kv"  # see services/router/routing.py
    # Prompts this short are prefilled on the decode worker: moving their few blocks costs
    # more than computing them (conditional disaggregation).
    local_prefill_tokens: int = 64
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
        self,
        workers: WorkerSet,
        config: DispatchConfig,
        metrics: RouterMetrics,
        policy: Policy,
        feed: KVFeed | None = None,
    ) -> None:
        """`feed` keeps `policy`'s KV index true; kv routing needs both."""
        self.workers = workers
        self.config = config
        self.metrics = metrics
        self.policy = policy
        self.feed = feed
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._exported: set[str] = set()  # workers with load series in the metrics

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self._refresh()
        self._tasks.append(asyncio.create_task(self._refresh_forever()))
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(self._stop)))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        await self.workers.close()

    async def _refresh(self) -> None:
        await self.workers.refresh()
        if self.feed is not None:
            await self.feed.sync(self.workers.workers)
        self._export_load()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self._refresh()
            except Exception:
                log.exception("reading the registry failed")

    def _export_load(self) -> None:
        m, live = self.metrics, self.workers.workers
        for role in ("prefill", "decode", "both"):
            m.set_queue_depth(
                role, sum(w.record.waiting for w in live.values() if w.record.role == role)
            )
        for ref in live.values():
            m.set_kv_blocks(ref.worker_id, ref.record.used_blocks, ref.record.num_blocks)
        if self.feed is not None:
            m.set_kv_index(self.feed.index.num_entries, self.feed.resyncs, self.feed.expired)
        for gone in self._exported - live.keys():  # series of departed workers go too
            m.forget_worker(gone)
            self.policy.predicted.forget(gone)
        self._exported = set(live)

    async def ready(self) -> bool:
        if self.config.mode == "colocated":
            return bool(self.workers.serving("both"))
        return bool(self.workers.serving("decode"))

    # ---- requests --------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        hashes = self._hashes(request.prompt_token_ids)
        if self.config.mode == "colocated":
            worker = self._pick("both", request, hashes).worker
            async for delta in self._decode(worker, request, None, ROUTE_COLOCATED):
                yield delta
            return
        decode = self._pick("decode", request, hashes)
        if decode.uncached <= self.config.local_prefill_tokens:
            async for delta in self._decode(decode.worker, request, None, ROUTE_LOCAL):
                yield delta
            return
        async for delta in self._disaggregated(request, decode.worker, hashes):
            yield delta

    def _hashes(self, prompt: list[int]) -> list[int]:
        """The prompt's chained block hashes, as the workers compute them (kv routing only).
        A pool shares one block size; a worker with another one simply gets no hits."""
        if not self.policy.uses_cache or not self.workers.workers:
            return []
        block_size = next(iter(self.workers.workers.values())).record.block_size
        return chain_hashes(prompt, block_size)

    def _pick(self, role: str, request: GenerateRequest, hashes: list[int]) -> Choice:
        choice = self._choose(role, request, hashes)
        if choice is None:
            raise BackendError(503, f"no {role} worker is available", "service_unavailable")
        return choice

    def _choose(self, role: str, request: GenerateRequest, hashes: list[int]) -> Choice | None:
        prompt_len = len(request.prompt_token_ids)
        choice = self.policy.pick(role, self.workers.serving(role), hashes, prompt_len)
        if choice is not None:
            self.policy.routed(choice, hashes)
            self.metrics.record_route(role, choice.worker.worker_id, choice.cached_blocks)
        return choice

    async def _disaggregated(
        self, request: GenerateRequest, decode: WorkerRef, hashes: list[int]
    ) -> AsyncIterator[TokenDelta]:
        chosen = self._choose("prefill", request, hashes)
        response = None
        if chosen is None:
            self._fell_back(request, "no_prefill_worker", "no prefill worker is registered")
        else:
            response = await self._prefill(chosen.worker, request, chosen.uncached)
        if response is None:  # counted and logged; the request still runs
            async for delta in self._decode(decode, request, None, ROUTE_LOCAL):
                yield delta
            return
        assert chosen is not None
        prefill = chosen.worker
        done = bool(response.finish_reason)
        first = TokenDelta(
            [response.first_token],
            [response.first_logprob] if response.HasField("first_logprob") else [],
            finished=done,
            finish_reason=response.finish_reason or None,
            num_cached_tokens=response.num_cached_tokens,
            route=ROUTE_DISAGG,
        )
        if done:
            yield first
            return
        released = False
        try:
            yield first
            async for delta in self._decode(decode, request, response, ROUTE_DISAGG):
                released = True  # the decode worker read (or gave up on) the KV
                yield delta
        finally:
            if not released:  # nobody will read the held blocks: free them now
                self._later(self._abort(prefill, request.request_id))

    async def _prefill(
        self, ref: WorkerRef, request: GenerateRequest, uncached: int
    ) -> worker_pb2.PrefillResponse | None:
        msg = worker_pb2.PrefillRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            params=params_to_pb(request.params),
        )
        with self.workers.busy(ref, uncached):
            try:
                return await ref.stub.Prefill(msg, timeout=self.config.prefill_timeout_s)
            except grpc.aio.AioRpcError as e:
                _raise_client_error(e)
                reason = e.code().name.lower()
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
        prefill: worker_pb2.PrefillResponse | None,
        route: str,
    ) -> AsyncIterator[TokenDelta]:
        msg = worker_pb2.DecodeRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            params=params_to_pb(request.params),
        )
        if prefill is not None:
            msg.kv.CopyFrom(prefill.kv)
            msg.first_token = prefill.first_token
        with self.workers.busy(ref):
            call = ref.stub.Decode(msg)
            first = True
            # Cached tokens are prompt tokens nobody computed: with a remote prefill that is
            # the prefill worker's count (the decode worker's own hits only spare reads),
            # unless the read failed and the decode worker recomputed the prompt.
            local = prefill is None
            try:
                async for chunk in call:
                    if first and prefill is not None:
                        self._account_transfer(chunk, prefill, request.request_id)
                        local = chunk.kv_recomputed
                    yield TokenDelta(
                        list(chunk.token_ids),
                        list(chunk.logprobs),
                        finished=chunk.finished,
                        finish_reason=chunk.finish_reason or None,
                        num_cached_tokens=chunk.num_cached_tokens if local else 0,
                        route=route if first else "",
                    )
                    first = False
            except grpc.aio.AioRpcError as e:
                _raise_client_error(e)
                raise BackendError(
                    502, f"decode worker {ref.worker_id} failed: {e.details()}"
                ) from None
            finally:
                call.cancel()  # a no-op when the stream ended; else the worker aborts

    def _account_transfer(
        self, chunk: worker_pb2.DecodeChunk, prefill: worker_pb2.PrefillResponse, request_id: str
    ) -> None:
        if chunk.kv_recomputed:
            self.metrics.record_recompute()
            # The read failed or came too late; the prefill worker may still hold the
            # blocks until its lease ends: release them now.
            ref = self.workers.workers.get(prefill.kv.worker_id)
            if ref is not None:
                self._later(self._abort(ref, request_id))
            return
        self.metrics.record_transfer(chunk.kv_bytes_read, chunk.kv_read_seconds)

    async def _abort(self, ref: WorkerRef, request_id: str) -> None:
        try:
            await ref.stub.Abort(worker_pb2.AbortRequest(request_id=request_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            log.warning("abort of %s on %s failed: %s", request_id, ref.worker_id, e.details())

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, but keep a reference until done (and wait for it on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _raise_client_error(e: grpc.aio.AioRpcError) -> None:
    """The worker rejected the request itself: the client's fault, say so."""
    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
        raise BackendError(400, e.details() or "invalid request", "invalid_request_error")
