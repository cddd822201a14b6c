"""The real Backend: each request goes to a prefill worker and a decode worker over gRPC.

    disaggregated:  Prefill(prefill worker) -> first token to the client at once
                    Decode(decode worker, KV handle) -> the rest, streamed
    local prefill:  Decode(decode worker, no handle): short prompts, a prefill pool
                    scaled to zero or with the longer queue, scored prompts (when and
                    why: local_prefill.py)
    colocated:      Decode(a `both` worker, no handle), for comparison

A prefill worker that fails or misses its deadline (prefill_deadline.py) is not hidden: the
prompt goes to another prefill worker (`tandem_prefill_retries_total{reason}`), and when
none can take it, it is prefilled on the decode worker (`tandem_prefill_fallbacks_total
{reason}`), each logged. A worker whose calls keep failing has its breaker opened. A decode
worker that fails (dies, loses its engine, cuts the stream) has the request resumed on
another one with the prompt plus the tokens already streamed, counted in
`tandem_decode_retries_total{when}` and logged; the client's stream goes on without a gap.
A client that goes away (the iterator is closed early) aborts the request on both workers.

Which workers: services/router/picking.py (the --routing policy of routing.py), among
those the ClusterView (cluster_view.py) keeps current. With `kv` the decode worker is
chosen first, and the local-vs-remote decision counts only the prompt tokens *it* does not
hold: a conversation that comes back to the worker holding its history prefills its new
turn there. Workers are called through worker_calls.py (and their WorkerClient): no
protobuf here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from services.router.admission import RETRY_AFTER_S, Admission
from services.router.arrivals import ArrivalCounter
from services.router.backend import (
    ROUTE_COLOCATED,
    ROUTE_DISAGG,
    ROUTE_LOCAL,
    BackendError,
    GenerateRequest,
    TokenDelta,
)
from services.router.cluster_view import ClusterView
from services.router.cold_start import ColdStart
from services.router.dispatch_config import DispatchConfig
from services.router.local_prefill import always_local, local_route
from services.router.metrics import RouterMetrics
from services.router.picking import Picker
from services.router.prefill_deadline import PrefillDeadline
from services.router.routing import Policy
from services.router.worker_calls import WorkerCalls, first_delta
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef
from services.wire import DecodeCall, PrefillReply

log = logging.getLogger(__name__)
PREFILL_ATTEMPTS = 2  # prefill workers a request may try before it prefills locally
# Read under aclosing at every level: an ended request closes its chain now, down to the
# worker's call (an async for alone leaves it to the loop's finalizer: a task per level).
Deltas = AsyncGenerator[TokenDelta, None]


class Dispatcher:
    def __init__(
        self,
        cluster: ClusterView,
        config: DispatchConfig,
        metrics: RouterMetrics,
        policy: Policy,
        cold_start: ColdStart | None = None,
        arrivals: ArrivalCounter | None = None,
    ) -> None:
        """kv routing needs `policy`'s KV index kept true by `cluster`'s KV feed;
        `cold_start` holds requests while the serving pool has no worker (None: never);
        `arrivals` counts the requests that reach it, for the autoscaler's forecast."""
        self.cluster = cluster
        self.config = config
        self.metrics = metrics
        self.picker = Picker(cluster, policy, metrics)
        self.calls = WorkerCalls(cluster, metrics, PrefillDeadline(config.prefill_timeout_s))
        self.admission = Admission(config.queue_per_seq, self._prefill_rate)
        self.cold_start = cold_start or ColdStart(0.0, 1, metrics)
        self.arrivals = arrivals or ArrivalCounter()
        self._publishing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.cluster.start()
        self._publishing = asyncio.create_task(self.arrivals.run())

    async def close(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            await asyncio.gather(self._publishing, return_exceptions=True)
        await self.calls.close()
        await self.cluster.close()

    @property
    def _serving_pool(self) -> str:
        """The pool every request streams its tokens from."""
        return "both" if self.config.mode == "colocated" else "decode"

    async def ready(self) -> bool:
        """Ready with a worker to serve, or, holding requests for one, with none."""
        return self.cold_start.wait_s > 0 or bool(self.cluster.serving(self._serving_pool))

    # ---- requests --------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        pool, prompt = self._serving_pool, len(request.prompt_token_ids)
        # before admission: a request refused is demand too
        local = always_local(prompt, request.params, self.config)
        self.arrivals.arrived(prompt, request.params.max_tokens, local)
        workers = await self.cold_start.workers(pool, lambda: self.cluster.serving(pool))
        with self.admission.place(pool, workers, prompt) as place:
            async with aclosing(self._stream(request)) as deltas:
                async for delta in deltas:
                    place.prefilled()
                    yield delta

    def _prefill_rate(self) -> float | None:
        """The prefill pool's tokens/s: each worker's measured speed, times the routable
        ones (None until a remote prefill has been measured)."""
        per_worker = self.calls.deadline.tokens_per_s
        if per_worker is None:
            return None
        return per_worker * max(1, len(self.cluster.serving("prefill")))

    def _stream(self, request: GenerateRequest) -> Deltas:
        """The request's routed stream: on one worker, or prefilled on another first."""
        prompt = request.prompt_token_ids
        hashes = self.picker.hashes(prompt, request.cache_salt)
        if self.config.mode == "colocated":
            worker = self.picker.pick("both", prompt, hashes).worker
            return self._decode(worker, request, None, ROUTE_COLOCATED)
        decode = self.picker.pick("decode", prompt, hashes)
        route = local_route(request, decode, self.cluster, self.config)
        if route is not None:
            return self._decode(decode.worker, request, None, route, decode.uncached)
        return self._disaggregated(request, decode.worker, hashes)

    async def _disaggregated(
        self, request: GenerateRequest, decode: WorkerRef, hashes: list[int]
    ) -> Deltas:
        prefilled = await self._remote_prefill(request, hashes, decode)
        if prefilled is None:  # counted and logged; the request still runs
            async with aclosing(self._decode(decode, request, None, ROUTE_LOCAL)) as deltas:
                async for delta in deltas:
                    yield delta
            return
        prefill_ref, reply = prefilled
        done = reply.finish_reason is not None
        first = first_delta(reply, ROUTE_DISAGG)
        if done:
            yield first
            return
        released = False
        try:
            yield first
            async with aclosing(self._decode(decode, request, reply, ROUTE_DISAGG)) as deltas:
                async for delta in deltas:
                    released = True  # the decode worker read (or gave up on) the KV
                    yield delta
        finally:
            if not released:  # nobody will read the held blocks: free them now
                self.calls.abort_later(prefill_ref, request.request_id)

    async def _remote_prefill(
        self, request: GenerateRequest, hashes: list[int], decode: WorkerRef
    ) -> tuple[WorkerRef, PrefillReply] | None:
        """A prefill worker's reply, from another one when the first fails or misses its
        deadline (PREFILL_ATTEMPTS in all); None when none could: the decode worker
        prefills then. Never silent: each failure is logged and counted. Only workers whose
        KV `decode` can read are asked (`ClusterView.prefill_for`): it would compute the
        prompt again."""
        tried: list[str] = []
        readable = self.cluster.prefill_for(decode)
        reason, why = "no_prefill_worker", "no prefill worker is available"
        while len(tried) < PREFILL_ATTEMPTS:
            chosen = self.picker.choose(
                "prefill", request.prompt_token_ids, hashes, exclude=tried, among=readable
            )
            if chosen is None:
                if not tried and self.cluster.serving("prefill"):
                    heads, group = decode.kv_layout
                    why = (
                        f"no prefill worker whose KV {decode.worker_id} can read is available "
                        f"({heads} KV heads in groups of {group} a rank)"
                    )
                break
            if tried:
                log.warning("%s: %s; trying %s", request.request_id, why, chosen.worker.worker_id)
                self.metrics.record_prefill_retry(reason)
            ref = chosen.worker
            try:
                return ref, await self.calls.prefill(ref, request, chosen.uncached)
            except WorkerError as e:
                reason, why = e.code, f"prefill on {ref.worker_id} failed ({e.code})"
            except asyncio.CancelledError:
                # The client left (or a sibling choice failed) while the worker prefilled:
                # its answer may be on the way, with the blocks held under a lease that
                # nobody would read until it ran out.
                self.calls.abort_later(ref, request.request_id)
                raise
            self.calls.abort_later(ref, request.request_id)
            tried.append(ref.worker_id)
        log.warning("%s: %s; prefilling on the decode worker instead", request.request_id, why)
        self.metrics.record_prefill_fallback(reason)
        return None

    async def _decode(
        self,
        ref: WorkerRef,
        request: GenerateRequest,
        prefill: PrefillReply | None,
        route: str,
        local_tokens: int = 0,
    ) -> Deltas:
        """The request's tokens from `ref`; when `ref` fails (anything but refusing the
        request), the rest from another decode worker, resumed from the prompt plus every
        token the client already has (services/worker/handlers.py recomputes them), at
        most `decode_attempts` workers in all. Greedy, the text is what it would have been.
        `local_tokens`: prompt tokens the worker prefills itself (see WorkerCalls.decode)."""
        streamed = [prefill.first_token] if prefill is not None else []
        call = DecodeCall(
            request.request_id,
            request.prompt_token_ids,
            request.params,
            handle=prefill.handle if prefill is not None else None,
            first_token=prefill.first_token if prefill is not None else None,
            cache_salt=request.cache_salt,
        )
        tried = [ref.worker_id]
        labelled = False  # the request's route rides on the first delta the client gets
        while True:
            try:
                stream = self.calls.decode(ref, call, prefill, route, local_tokens)
                async with aclosing(stream) as deltas:
                    async for delta in deltas:
                        if labelled:
                            delta.route = ""
                        labelled = True
                        streamed.extend(delta.token_ids)
                        yield delta
                return
            except WorkerError as e:  # a refusal of the request was raised as a 400 instead
                failed, error = ref, e
            if prefill is not None and not labelled:  # its held blocks will not be read now
                self.calls.release_prefill(prefill, request.request_id)
            prefill = None
            self.calls.abort_later(failed, request.request_id)  # if it lives, it stops
            next_ref = self._resume_target(request, streamed, tried, error)
            when = "mid_stream" if streamed else "before_first_token"
            self.metrics.record_decode_retry(when)
            log.warning(
                "%s: decode worker %s failed (%s: %s) %s; resuming on %s with %d tokens",
                request.request_id, failed.worker_id, error.code, error.details,
                when.replace("_", " "), next_ref.worker_id, len(streamed),
            )  # fmt: skip
            tried.append(next_ref.worker_id)
            ref, local_tokens = next_ref, len(request.prompt_token_ids) + len(streamed)
            # the prompt's logprobs came with the first token: a client that has it has them
            params = replace(request.params, prompt_logprobs=None) if streamed else request.params
            call = DecodeCall(
                request.request_id,
                request.prompt_token_ids,
                params,
                generated_token_ids=list(streamed),
                cache_salt=request.cache_salt,
            )

    def _resume_target(
        self, request: GenerateRequest, streamed: list[int], tried: list[str], error: WorkerError
    ) -> WorkerRef:
        """Another decode worker for a request whose worker failed, or a 502 that says why
        there is none (the worker's own error stays in the log: it is no use to a client)."""
        if len(tried) >= self.config.decode_attempts:
            why = f"it failed on {len(tried)} decode workers"
        else:
            prompt = request.prompt_token_ids + streamed
            hashes = self.picker.hashes(prompt, request.cache_salt)
            choice = self.picker.choose(self._serving_pool, prompt, hashes, exclude=tried)
            if choice is not None:
                return choice.worker
            why = "its decode worker failed and no other one is available"
        log.warning("%s: giving up: %s (last: %s)", request.request_id, why, error)
        if error.busy:  # every worker it tried was full: the client should come back
            raise BackendError(
                429, "The server is at capacity; retry shortly.", "overloaded", RETRY_AFTER_S
            )
        raise BackendError(502, f"The request could not be completed: {why}.")
