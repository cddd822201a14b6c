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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_events import KVEventSink
from engine.output import RequestOutput
from engine.transfer.exchange import KVHandle, KVSink, KVSource, ReadReport
from engine.transfer.leases import DEFAULT_LEASE_S, LeaseTable
from engine.transfer.nixl_transfer import NixlKVTransfer
from services.worker.engine_thread import EngineLoop

log = logging.getLogger(__name__)
# How often the engine thread polls NIXL notifications (lease releases), expires leases
# and snapshots its load while it steps: together ~10 us, a few % of a mock step's cost
# when steps take no modelled time, and none of them needs to be fresher than this.
HOUSEKEEPING_S = 0.005


class RoleError(Exception):
    """This worker's role does not serve that call (a gRPC FAILED_PRECONDITION)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    engine: EngineConfig  # its role is the worker's role
    lease_s: float = DEFAULT_LEASE_S
    read_timeout_s: float = 10.0

    @property
    def role(self) -> str:
        return self.engine.role


@dataclass(slots=True)
class PrefillResult:
    first_token: int
    first_logprob: float | None
    num_cached_tokens: int
    finish_reason: str | None  # set when the first token already ends the request
    handle: KVHandle | None  # None when finished: nothing is held


@dataclass(slots=True)
class DecodeUpdate:
    output: RequestOutput
    report: ReadReport | None  # on the first update of a request whose KV was remote


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
        engine = Engine(config.engine, on_kv_event=on_kv_event)
        self.engine = engine
        # No NIXL progress thread: NIXL's spins without pause (a core per worker, idle or
        # not). The engine loop polls notifications at least every idle_s instead (every
        # quiet_s while it holds no lease and runs nothing), which also answers peers'
        # connection set-up; reads themselves are one-sided.
        self.transfer = NixlKVTransfer(
            self.agent_name, engine.runner.kv_cache, progress_thread=False
        )
        self.loop = EngineLoop(engine, quiet=self._quiet)
        self.source = (
            KVSource(engine, self.transfer, self.worker_id, LeaseTable(config.lease_s))
            if self.role != "decode"
            else None
        )
        self.sink = KVSink(engine, self.transfer, config.read_timeout_s)
        # Reads gate their requests' next step: every step. Lease releases and the load
        # snapshot only need to be recent: every HOUSEKEEPING_S, not at a step's cost.
        if self.source is not None:
            self.loop.add_tick(self.source.tick, every_s=HOUSEKEEPING_S)
        self.loop.add_tick(self._sink_tick)
        self.loop.add_tick(self._snapshot, every_s=HOUSEKEEPING_S)
        self._snapshot()

    def start(self) -> None:
        self.loop.start()

    def close(self) -> None:
        self.loop.stop()
        self.transfer.close()

    def _snapshot(self) -> None:
        """Engine thread, every HOUSEKEEPING_S: load as of then, for heartbeats that must
        not wait behind a long step (a worker busy for seconds is still alive)."""
        self.last_stats = self._stats(integrity=False)

    def _quiet(self) -> bool:
        """Engine thread: no request anywhere (none waits for KV either) and no lease to
        release or expire: the ticks can wait for the next call."""
        source = self.source
        return not self.engine.has_unfinished() and (source is None or len(source.leases) == 0)

    def _sink_tick(self) -> None:
        for out in self.sink.tick():
            self.loop.publish(out)

    # ---- calls -----------------------------------------------------------------------
    async def prefill(
        self, request_id: str, prompt: Sequence[int], params: SamplingParams
    ) -> PrefillResult:
        source = self.source
        if source is None:
            raise RoleError(f"{self.worker_id} is a {self.role} worker: it does not prefill")
        queue = self.loop.subscribe(request_id)
        done = False
        try:
            await self.loop.call(lambda e: e.add_request(request_id, prompt, params))
            out = _unwrap(await queue.get())
            handle = None
            if out.held:  # not finished: it goes on on a decode worker
                handle = await self.loop.call(lambda e: source.hold(request_id))
            done = True
            return PrefillResult(
                first_token=out.new_token_ids[0],
                first_logprob=out.new_logprobs[0] if out.new_logprobs else None,
                num_cached_tokens=out.num_cached_tokens,
                finish_reason=None if handle is not None else out.finish_reason,
                handle=handle,
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
    ) -> AsyncIterator[DecodeUpdate]:
        """Stream a request's tokens. With a handle, the prompt's KV is read from the
        prefill worker (and `first_token`, already sent to the client, is not repeated)."""
        if self.role == "prefill":
            raise RoleError(f"{self.worker_id} is a prefill worker: it does not decode")
        if handle is not None:
            _check_handle(handle, len(prompt), self.engine.block_size, first_token)
        queue = self.loop.subscribe(request_id)
        finished = False
        try:
            admitted = self.loop.submit(
                lambda e: self._admit(request_id, prompt, params, handle, first_token)
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
    ) -> None:
        """Engine thread."""
        self.engine.add_request(request_id, prompt, params, remote_prefill=handle is not None)
        if handle is not None:
            assert first_token is not None
            self.sink.expect(request_id, handle, first_token)

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
        load, source = self.engine.load(), self.source
        return WorkerStats(
            running=load.running,
            waiting=load.waiting,
            num_blocks=load.num_blocks,
            free_blocks=load.free_blocks,
            cached_blocks=load.cached_blocks,
            used_blocks=load.used_blocks,
            held_blocks=load.held_blocks,
            leases=len(source.leases) if source else 0,
            leases_expired=source.leases.num_expired if source else 0,
            queued_prefill_tokens=load.queued_prefill_tokens,
            kv_reads=self.sink.num_reads,
            kv_bytes_read=self.sink.bytes_read,
            kv_recomputed=self.sink.num_recomputed,
            idle=load.idle,
            integrity_error=_integrity_error(self.engine) if integrity else "",
        )


@dataclass(frozen=True, slots=True)
class WorkerStats:
    running: int
    waiting: int
    num_blocks: int
    free_blocks: int
    cached_blocks: int
    used_blocks: int
    held_blocks: int
    leases: int
    leases_expired: int
    queued_prefill_tokens: int
    kv_reads: int
    kv_bytes_read: int
    kv_recomputed: int
    idle: bool
    integrity_error: str  # empty when the block pool's books balance (or not audited)


def _integrity_error(engine: Engine) -> str:
    try:
        engine.check_integrity()
    except AssertionError as e:
        return str(e) or "block pool integrity check failed"
    return ""


def _unwrap(item: RequestOutput | BaseException) -> RequestOutput:
    if isinstance(item, BaseException):
        raise item
    return item


def _check_handle(
    handle: KVHandle, prompt_len: int, block_size: int, first_token: int | None
) -> None:
    if first_token is None:
        raise ValueError("a KV handle comes with the first token the prefill worker sampled")
    if handle.num_tokens != prompt_len:
        raise ValueError(
            f"the KV handle covers {handle.num_tokens} tokens, the prompt has {prompt_len}"
        )
    if len(handle.block_ids) != -(-prompt_len // block_size):
        raise ValueError(
            f"the KV handle has {len(handle.block_ids)} blocks; a {prompt_len}-token prompt "
            f"needs {-(-prompt_len // block_size)} of {block_size} tokens"
        )
