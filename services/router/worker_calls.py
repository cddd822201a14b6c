"""One call to one worker, with the bookkeeping around it: the router's count of what is in
flight on the worker, transfer metrics, and aborts of what a worker holds for nobody.
Which worker gets a call, and what happens when one fails, is dispatch.py's business.

    prefill(ref, ...)  ->  PrefillReply                 raises WorkerError
    decode(ref, ...)   ->  TokenDelta, TokenDelta, ...  raises WorkerError, also for a
                                                        stream that ends unfinished
    a refusal of the request itself (INVALID_ARGUMENT) -> BackendError 400 at once
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from typing import Any

from engine.request import StartTiming
from services.router.backend import BackendError, GenerateRequest, StartTimes, TokenDelta
from services.router.cluster_view import ClusterView
from services.router.metrics import RouterMetrics
from services.router.prefill_deadline import PrefillDeadline
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply

log = logging.getLogger(__name__)


class WorkerCalls:
    def __init__(
        self, cluster: ClusterView, metrics: RouterMetrics, deadline: PrefillDeadline
    ) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self.deadline = deadline
        self._background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)  # aborts in flight

    async def prefill(
        self, ref: WorkerRef, request: GenerateRequest, uncached: int
    ) -> PrefillReply:
        """`uncached` prompt tokens count as queued on `ref` until it answers, which it
        must do by the deadline those and the tokens queued ahead of them allow."""
        ahead = ref.queued_tokens + uncached
        call = PrefillCall(
            request.request_id, request.prompt_token_ids, request.params, request.cache_salt
        )
        started = time.monotonic()
        with self.cluster.workers.busy(ref, uncached):
            try:
                reply = await ref.client.prefill(call, self.deadline.for_tokens(ahead))
            except WorkerError as e:
                raise_client_error(e)
                if not e.busy:
                    self._outcome(ref, ok=False)
                raise
        self.deadline.observe(ahead, time.monotonic() - started)
        self._outcome(ref, ok=True)
        return reply

    async def decode(
        self,
        ref: WorkerRef,
        call: DecodeCall,
        prefill: PrefillReply | None,
        route: str,
        local_tokens: int,
    ) -> AsyncGenerator[TokenDelta, None]:
        """One decode worker's stream. `local_tokens`: prompt tokens it prefills itself,
        counted as queued on it until its first token arrives (as a prefill worker's are
        until its reply)."""
        first, finished = True, False
        # Cached tokens are prompt tokens nobody computed: with a remote prefill that is
        # the prefill worker's count (the decode worker's own hits only spare reads),
        # unless the read failed and the decode worker recomputed the prompt. A resumed
        # request's hits cover tokens of its own output: none of them count.
        local = prefill is None and not call.generated_token_ids
        # aclosing: a client gone mid-stream cancels the call now, and the worker aborts.
        with self.cluster.workers.busy(ref, local_tokens) as prefilling:
            try:
                async with aclosing(ref.client.decode(call)) as stream:
                    async for chunk in stream:
                        if first:
                            prefilling.done()
                        if first and prefill is not None:
                            self._account_transfer(chunk, prefill, call.request_id)
                            local = chunk.kv_recomputed
                        finished = chunk.finished
                        yield TokenDelta(
                            chunk.token_ids,
                            chunk.logprobs,
                            finished=chunk.finished,
                            finish_reason=chunk.finish_reason,
                            num_cached_tokens=chunk.num_cached_tokens if local else 0,
                            route=route if first else "",
                            top_logprobs=chunk.top_logprobs,
                            start=_decode_start(
                                chunk.start, prefill is not None and not chunk.kv_recomputed
                            ),
                            prompt_logprobs=chunk.prompt_logprobs,
                            prompt_top_logprobs=chunk.prompt_top_logprobs,
                        )
                        first = False
            except WorkerError as e:
                raise_client_error(e)
                if not e.busy:
                    self._outcome(ref, ok=False)
                raise
        self._outcome(ref, ok=finished)
        if not finished:
            raise WorkerError("cut_short", f"{ref.worker_id} ended the stream unfinished")

    def _outcome(self, ref: WorkerRef, ok: bool) -> None:
        """A call's end, for `ref`'s circuit breaker (a full queue is no failure)."""
        change = ref.breaker.record(ok)
        if change is not None:
            log.warning("circuit breaker of %s %s", ref.worker_id, change)
            self.metrics.record_breaker(ref.worker_id, change)

    def release_prefill(self, prefill: PrefillReply, request_id: str) -> None:
        """The prefill worker holds the prompt's blocks for a reader that will not come."""
        assert prefill.handle is not None
        ref = self.cluster.get(prefill.handle.worker_id)
        if ref is not None:
            self.abort_later(ref, request_id)

    def abort_later(self, ref: WorkerRef, request_id: str) -> None:
        """Tell `ref` to drop the request, without waiting for its answer."""
        self._later(self._abort(ref, request_id))

    def _account_transfer(self, chunk: DecodeReply, prefill: PrefillReply, request_id: str) -> None:
        if chunk.kv_recomputed:
            self.metrics.record_recompute()
            # The read failed or came too late; the prefill worker may still hold the
            # blocks until its lease ends: release them now.
            self.release_prefill(prefill, request_id)
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


def raise_client_error(e: WorkerError) -> None:
    """The worker rejected the request itself: the client's fault, say so."""
    if e.rejected:
        raise BackendError(400, e.details or "invalid request", "invalid_request_error")


def first_delta(reply: PrefillReply, route: str) -> TokenDelta:
    """A remote prefill's first token as the request's first delta (sent before the KV
    moves: TTFT does not wait for the transfer)."""
    return TokenDelta(
        [reply.first_token],
        [reply.first_logprob] if reply.first_logprob is not None else [],
        finished=reply.finish_reason is not None,
        finish_reason=reply.finish_reason,
        num_cached_tokens=reply.num_cached_tokens,
        route=route,
        top_logprobs=[reply.first_top_logprobs] if reply.first_top_logprobs else [],
        start=_prefill_start(reply.start),
    )


def _prefill_start(t: StartTiming | None) -> StartTimes | None:
    return None if t is None else StartTimes(queue_s=t.queue_s, prefill_s=t.compute_s)


def _decode_start(t: StartTiming | None, remote: bool) -> StartTimes | None:
    """A decode worker's start: with the prompt's KV from a prefill worker, the wait for it
    and the first step; with the prompt computed there, its queue and prefill."""
    if t is None or not remote:
        return _prefill_start(t)
    return StartTimes(kv_transfer_s=t.queue_s + t.kv_wait_s, first_decode_s=t.compute_s)
