"""A worker: one engine on its own thread, its KV cache registered with NIXL, a gRPC server
(services/worker/servicer.py) in front, and a heartbeat into the registry.

    gRPC handler --await--> Worker.prefill / decode / abort --EngineLoop.call--> engine
                                                                  ticks: KVSource (leases,
                                                                  notifications), KVSink (reads)

Roles: `prefill` serves Prefill; `decode` serves Decode (reading the KV a handle points at,
or prefilling locally when there is none); `both` serves everything (colocated mode).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_events import KVEventSink
from engine.output import RequestOutput
from engine.parallel.kv import open_transfer
from engine.transfer.exchange import KVHandle, KVSink, KVSource
from engine.transfer.leases import DEFAULT_LEASE_S, LeaseTable
from engine.transfer.progress import ReadProgress
from services.wire import PrefillReply
from services.worker.engine_thread import EngineLoop
from services.worker.results import DecodeUpdate
from services.worker.stats import WorkerStats, collect_stats

log = logging.getLogger(__name__)
# How often the engine thread polls NIXL notifications (lease releases), expires leases
# and snapshots its load while it steps: together ~10 us, a few % of a mock step's cost
# when steps take no modelled time, and none of them needs to be fresher than this.
HOUSEKEEPING_S = 0.005
POLL_S, IDLE_S, QUIET_S = 0.0005, 0.02, 0.1
WAITING_PER_SEQ = 4


class RoleError(Exception):
    """This worker's role does not serve that call (a gRPC FAILED_PRECONDITION)."""


class Overloaded(Exception):
    """This worker's waiting queue is full (a gRPC RESOURCE_EXHAUSTED): try another."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    engine: EngineConfig  # its role is the worker's role
    lease_s: float = DEFAULT_LEASE_S
    read_timeout_s: float = 10.0
    # Requests that may wait for a place in the batch; None: WAITING_PER_SEQ x max_num_seqs.
    # Each router bounds what it sends a pool (services/router/admission.py); this bounds
    # what several routers together, or one with an unbalanced pool, can pile up here.
    max_waiting: int | None = None
    served_name: str = ""  # its metrics' model_name; "": from the model's file name

    def __post_init__(self) -> None:
        if self.max_waiting is not None and self.max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {self.max_waiting}")

    @property
    def waiting_limit(self) -> int:
        if self.max_waiting is not None:
            return self.max_waiting
        return WAITING_PER_SEQ * self.engine.scheduler.max_num_seqs

    @property
    def role(self) -> str:
        return self.engine.role


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        on_kv_event: KVEventSink | None = None,
        started_at_ms: int | None = None,
    ) -> None:
        """`on_kv_event` gets the block pool's KV events, on the engine thread."""
        self.config = config
        self.worker_id = config.worker_id
        self.role = config.role
        # A fresh agent name per process: a handle from before a restart can never be
        # read through the new process's agent (it names one that no longer exists).
        self.started_at_ms = started_at_ms or int(time.time() * 1000)
        self.agent_name = f"{self.worker_id}-{uuid.uuid4().hex[:8]}"
        self.loop = EngineLoop(
            lambda: Engine(config.engine, on_kv_event=on_kv_event), idle_wait=self._idle_wait
        )
        engine = self.engine = self.loop.engine
        # No NIXL progress thread: NIXL's spins without pause (a core per worker, idle or
        # not). The engine loop polls notifications between steps instead (see
        # _idle_wait), which also answers peers' connection set-up, and while prompts are
        # held for readers a light thread of ours answers their reads during steps
        # (engine/transfer/progress.py).
        try:
            self.transfer = open_transfer(
                self.agent_name, engine.runner.kv_cache, engine.runner.heads, engine.tp
            )
        except BaseException:
            self.loop.stop()  # its thread holds the engine until told
            raise
        self.source = (
            KVSource(engine, self.transfer, self.worker_id, LeaseTable(config.lease_s))
            if self.role != "decode"
            else None
        )
        self.sink = KVSink(engine, self.transfer, config.read_timeout_s)
        # Reads gate their requests' next step: every step. Lease releases and the load
        # snapshot only need to be recent: every HOUSEKEEPING_S, not at a step's cost.
        self.progress: ReadProgress | None = None
        if self.source is not None:
            self.loop.add_tick(self.source.tick, every_s=HOUSEKEEPING_S)
            self.loop.add_output_hook(self._lease_held)
            leases = self.source.leases
            self.progress = ReadProgress(self.transfer, lambda: len(leases) > 0)
        self.loop.add_tick(self._sink_tick)
        self.loop.add_tick(self._snapshot, every_s=HOUSEKEEPING_S)
        self._snapshot()

    def start(self) -> None:
        self.loop.start()

    def close(self) -> None:
        self.loop.stop()
        if self.progress is not None:
            self.progress.stop()
        self.transfer.close()

    def _snapshot(self) -> None:
        """Engine thread, every HOUSEKEEPING_S: load as of then, for heartbeats that must
        not wait behind a long step (a worker busy for seconds is still alive)."""
        self.last_stats = self._stats(integrity=False)

    def _idle_wait(self) -> float:
        """Engine thread, nothing running: how long the ticks may wait for a call. Reads
        in flight, or to start, are polled every POLL_S; leases and requests waiting for
        KV are looked at every IDLE_S; with neither, every QUIET_S (a call wakes the loop
        anyway)."""
        if self.sink.due:
            return POLL_S
        source = self.source
        busy = self.engine.has_unfinished() or (source is not None and len(source.leases) > 0)
        return IDLE_S if busy else QUIET_S

    def _lease_held(self, outs: Sequence[RequestOutput]) -> None:
        """Engine thread, after each step: its held prompts leased, their readers served
        from now on even while the next step runs."""
        assert self.source is not None and self.progress is not None
        if self.source.lease_held(outs):
            self.progress.wake()

    def _sink_tick(self) -> None:
        for out in self.sink.tick():
            self.loop.publish(out)

    # ---- calls -----------------------------------------------------------------------
    async def prefill(
        self, request_id: str, prompt: Sequence[int], params: SamplingParams, cache_salt: str = ""
    ) -> PrefillReply:
        source = self.source
        if source is None:
            raise RoleError(f"{self.worker_id} is a {self.role} worker: it does not prefill")
        queue = self.loop.subscribe(request_id)
        done = False
        try:
            await self.loop.call(lambda e: self._add(request_id, prompt, params, cache_salt))
            out = _unwrap(await queue.get())
            # not finished: it goes on on a decode worker, its blocks leased already
            handle = source.take(request_id) if out.held else None
            done = True
            return PrefillReply(
                first_token=out.new_token_ids[0],
                first_logprob=out.new_logprobs[0] if out.new_logprobs else None,
                num_cached_tokens=out.num_cached_tokens,
                finish_reason=None if handle is not None else out.finish_reason,
                handle=handle,
                first_top_logprobs=out.new_top_logprobs[0] if out.new_top_logprobs else (),
                start=out.start,
            )
        finally:
            self.loop.unsubscribe(request_id)
            if not done:  # cancelled or failed: nobody will read these blocks
                self.loop.submit(lambda e: source.drop(request_id))

    async def decode(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        handle: KVHandle | None = None,
        first_token: int | None = None,
        cache_salt: str = "",
    ) -> AsyncGenerator[DecodeUpdate, None]:
        """Stream a request's tokens. With a handle, the prompt's KV is read from the
        prefill worker (and `first_token`, already sent to the client, is not repeated)."""
        if self.role == "prefill":
            raise RoleError(f"{self.worker_id} is a prefill worker: it does not decode")
        if handle is not None:
            handle.check(len(prompt), self.engine.block_size, first_token)
        queue = self.loop.subscribe(request_id)
        finished = False
        try:
            admitted = self.loop.submit(
                lambda e: self._admit(request_id, prompt, params, handle, first_token, cache_salt)
            )
            # Not awaited: a refusal comes through the queue, ahead of any output, and
            # this loop wakes once for the first token instead of twice.
            admitted.add_done_callback(lambda f: self._refused(request_id, f))
            first = True
            while not finished:
                out = _unwrap(await queue.get())
                # Outputs already queued behind it go out with it: when the stream falls
                # behind the engine, one message carries several steps' tokens.
                while not out.finished and not queue.empty():
                    out = out.extend(_unwrap(queue.get_nowait()))
                # Stored before the request joined the batch, so there by its first output.
                report = self.sink.reports.pop(request_id, None) if first and handle else None
                first, finished = False, out.finished
                yield DecodeUpdate(out, report)
        finally:
            self.loop.unsubscribe(request_id)
            if not finished:  # the caller went away: free the blocks now
                self.loop.submit(lambda e: self._drop(request_id))

    def _admit(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        handle: KVHandle | None,
        first_token: int | None,
        cache_salt: str,
    ) -> None:
        """Engine thread."""
        self._add(request_id, prompt, params, cache_salt, remote_prefill=handle is not None)
        if handle is not None:
            assert first_token is not None
            self.sink.expect(request_id, handle, first_token)

    def _add(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        cache_salt: str,
        remote_prefill: bool = False,
    ) -> None:
        """Engine thread: queue a request, unless the queue is full."""
        if self.engine.num_waiting() >= self.config.waiting_limit:
            raise Overloaded(
                f"{self.worker_id} has {self.engine.num_waiting()} requests waiting already"
            )
        self.engine.add_request(
            request_id, prompt, params, remote_prefill=remote_prefill, cache_salt=cache_salt
        )

    def _refused(self, request_id: str, admitted: concurrent.futures.Future[None]) -> None:
        """Any thread: an admission that raised fails its request's stream."""
        if not admitted.cancelled() and (error := admitted.exception()) is not None:
            self.loop.fail(request_id, error)

    def _drop(self, request_id: str) -> bool:
        """Engine thread: abort a request wherever it is, its lease and pending read too."""
        self.sink.forget(request_id)
        if self.source is not None:
            return self.source.drop(request_id)
        return self.engine.abort(request_id)

    async def abort(self, request_id: str) -> bool:
        return await self.loop.call(lambda e: self._drop(request_id))

    async def dump_kv(self) -> tuple[int, list[int]]:
        """(seq of the last KV event, every cached block hash), consistent with each other."""
        snap = await self.loop.call(lambda e: e.kv_snapshot())
        return snap.seq, snap.block_hashes

    async def stats(self, integrity: bool = False) -> WorkerStats:
        """A consistent snapshot; `integrity` also audits the block pool (O(blocks))."""
        return await self.loop.call(lambda e: self._stats(integrity))

    def _stats(self, integrity: bool) -> WorkerStats:
        """Engine thread."""
        return collect_stats(self.engine, self.source, self.sink, integrity)


def _unwrap(item: RequestOutput | BaseException) -> RequestOutput:
    if isinstance(item, BaseException):
        raise item
    return item
