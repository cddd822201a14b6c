"""The router's side of the KV index: tail every worker's KV stream in Redis into a KVIndex.

    follow(w):  MULTI { GET :state, SMEMBERS :blocks, XREVRANGE :stream + - COUNT 1 }
                -> index.replace(w, blocks); read the stream after that entry
    poll():     XREAD over all followed streams -> each entry, in order:

        snapshot entry                  replace w's blocks, seq := entry's seq
        events, first seq == seq + 1    apply them
        events, all seq <= seq          already known (covered by a snapshot or dump): skip
        events or keepalive past a gap  resync: DumpKV rpc to the worker, replace its blocks,
                                        then replay what arrived meanwhile (same rules)
        another process (started_at)    resync (its snapshot entry was not seen)

A worker that leaves the registry is unfollowed and purged (`sync`); one whose stream is
silent for `expiry_s` (it writes a keepalive every second) is purged until it speaks
again. A Redis that restarts (its run_id changes) starts empty: streams are read from
the start again, where each worker's first write is a snapshot of its cache. The feed
asks for the run_id every `restart_check_s` rather than waiting for a connection error:
redis-py (from 6) reconnects and retries by itself, so a restart may raise nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from services.kv.index import KVIndex
from services.kv.stream import FIELD, KVKeys, parse_state
from services.pb.events_pb2 import KVEventBatch
from services.wire import KVDump

log = logging.getLogger(__name__)
ResyncFn = Callable[[str], Awaitable[KVDump]]  # a worker's DumpKV rpc, or a stand-in
MAX_PENDING = 10_000  # entries held while a resync runs; past that they are dropped (and
# the gap that leaves makes the next entry resync again: correct, only slower)


@dataclass(slots=True)
class _Follow:
    worker_id: str
    keys: KVKeys
    started_at_ms: int | None = None  # the process whose state the index holds
    seq: int | None = None  # last event applied; None: nothing trusted yet
    last_id: str = "0-0"  # stream position
    last_seen: float = field(default_factory=time.monotonic)
    resync: asyncio.Task[None] | None = None
    pending: list[KVEventBatch] = field(default_factory=list)


class KVFeed:
    def __init__(
        self,
        client: aioredis.Redis,
        index: KVIndex,
        resync: ResyncFn,
        prefix: str = "tandem",
        expiry_s: float = 10.0,
        block_ms: int = 100,
        restart_check_s: float = 1.0,
    ) -> None:
        self._r = client
        self.index = index
        self._resync_fn = resync
        self._prefix = prefix
        self.expiry_s = expiry_s
        self._block_ms = block_ms
        self._follows: dict[str, _Follow] = {}
        self._by_stream: dict[str, _Follow] = {}
        self.restart_check_s = restart_check_s
        self._run_id: str | None = None
        self._next_restart_check = 0.0
        self.redis_restarts = 0
        self.resyncs: Counter[str] = Counter()  # by reason: gap, restart, unknown
        self.expired = 0
        self.events = 0

    @property
    def followed(self) -> list[str]:
        return list(self._follows)

    # ---- which workers -----------------------------------------------------------------
    async def sync(self, worker_ids: Iterable[str]) -> None:
        """Follow exactly these workers (the registry's live set)."""
        live = set(worker_ids)
        for gone in [w for w in self._follows if w not in live]:
            self.unfollow(gone)
        for new in live - self._follows.keys():
            await self.follow(new)

    async def follow(self, worker_id: str) -> None:
        """Start from the state Redis holds for the worker, consistent with its stream."""
        keys = KVKeys.of(worker_id, self._prefix)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.get(keys.state)
            pipe.smembers(keys.blocks)
            pipe.xrevrange(keys.stream, count=1)
            raw_state, members, last = await pipe.execute()
        f = _Follow(worker_id, keys)
        state = parse_state(raw_state)
        if state is not None and last:
            f.started_at_ms, f.seq = state
            f.last_id = _text(last[0][0])
            self.index.replace(worker_id, (int(h) for h in members))
        self._follows[worker_id] = f
        self._by_stream[keys.stream] = f

    def unfollow(self, worker_id: str) -> None:
        f = self._follows.pop(worker_id, None)
        if f is None:
            return
        del self._by_stream[f.keys.stream]
        if f.resync is not None:
            f.resync.cancel()
        self.index.purge(worker_id)

    # ---- reading -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except redis.ConnectionError as e:
                log.warning("KV feed lost Redis (%s); retrying", e)
                self._next_restart_check = 0.0  # the server the feed finds next may be new
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("KV feed poll failed")
                await asyncio.sleep(0.5)

    async def poll(self) -> int:
        """One XREAD round (blocking up to block_ms); returns the entries read."""
        self.expire()
        if not self._follows:
            await asyncio.sleep(self._block_ms / 1000)
            return 0
        await self._check_restart()
        streams = {f.keys.stream: f.last_id for f in self._follows.values()}
        reply: Any = await self._r.xread(streams, count=1000, block=self._block_ms)  # type: ignore[arg-type]
        n = 0
        for stream, entries in reply or []:
            f = self._by_stream.get(_text(stream))
            for entry_id, fields in entries:
                if f is None or f.worker_id not in self._follows:
                    break  # unfollowed while we read
                f.last_id = _text(entry_id)
                self._take(f, KVEventBatch.FromString(fields[FIELD]))
                n += 1
        return n

    def expire(self, now: float | None = None) -> None:
        """Purge workers whose stream has been silent too long (they keep following)."""
        now = time.monotonic() if now is None else now
        for f in self._follows.values():
            if f.seq is not None and now - f.last_seen > self.expiry_s:
                log.warning(
                    "KV events of %s expired (silent %.0f s)", f.worker_id, now - f.last_seen
                )
                self.index.purge(f.worker_id)
                f.seq = f.started_at_ms = None
                self.expired += 1

    # ---- one entry -----------------------------------------------------------------------
    def _take(self, f: _Follow, batch: KVEventBatch) -> None:
        f.last_seen = time.monotonic()
        if f.resync is not None:
            if len(f.pending) < MAX_PENDING:
                f.pending.append(batch)
            return
        self._apply(f, batch)

    def _apply(self, f: _Follow, batch: KVEventBatch) -> None:
        if batch.snapshot:
            self.index.replace(f.worker_id, batch.block_hashes)
            f.started_at_ms, f.seq = batch.started_at_unix_ms, batch.seq
            return
        if f.seq is None or batch.started_at_unix_ms != f.started_at_ms:
            reason = "unknown" if f.seq is None else "restart"
            self._start_resync(f, reason, batch)
            return
        events = batch.events
        last = events[-1].seq if events else batch.seq
        if last <= f.seq:
            return  # known already
        if (events[0].seq if events else batch.seq) > f.seq + 1:
            self._start_resync(f, "gap", batch)
            return
        # A batch overlaps what is known only after a resync: a long prompt's batch holds
        # hundreds of events, so the common case is not filtered one by one.
        fresh = (
            events if not events or events[0].seq > f.seq else [e for e in events if e.seq > f.seq]
        )
        self.index.apply(f.worker_id, fresh)
        self.events += len(fresh)
        f.seq = last

    def _start_resync(self, f: _Follow, reason: str, batch: KVEventBatch) -> None:
        log.info("resyncing KV state of %s (%s)", f.worker_id, reason)
        self.resyncs[reason] += 1
        f.pending = [batch]
        f.resync = asyncio.get_running_loop().create_task(self._resync(f))

    async def _resync(self, f: _Follow) -> None:
        try:
            dump = await self._resync_fn(f.worker_id)
        except Exception as e:  # unreachable worker: know nothing rather than stale things
            log.warning("resync of %s failed: %s", f.worker_id, e)
            self.index.purge(f.worker_id)
            f.seq = f.started_at_ms = None
            f.pending.clear()
            f.resync = None
            return
        f.resync = None
        if f.worker_id not in self._follows:
            return
        self.index.replace(f.worker_id, dump.block_hashes)
        f.started_at_ms, f.seq = dump.started_at_unix_ms, dump.seq
        pending, f.pending = f.pending, []
        for batch in pending:
            self._take(f, batch)

    # ---- Redis restarts -------------------------------------------------------------------
    async def _server_run_id(self) -> str:
        info = await self._r.info("server")
        return str(info["run_id"])

    async def _check_restart(self) -> None:
        now = time.monotonic()
        if now < self._next_restart_check:
            return
        run_id = await self._server_run_id()
        self._next_restart_check = now + self.restart_check_s
        if self._run_id is not None and run_id != self._run_id:
            log.warning("Redis restarted: reading every KV stream from its start")
            self.redis_restarts += 1
            for f in self._follows.values():
                f.last_id = "0-0"
        self._run_id = run_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
