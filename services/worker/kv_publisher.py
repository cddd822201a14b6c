"""The worker's side of the KV index: its block pool's events, batched into its Redis stream.

    engine thread: BlockPool event -> on_event() -> buffer (under a lock)
    asyncio:       every interval_s: flush() -> one Lua script (services/kv/stream.py):
                   KVEventBatch appended to :stream, :blocks and :state updated together

A flush with nothing new still writes a keepalive (an empty batch carrying the last seq)
every `keepalive_s`, so readers can tell a quiet worker from a dead one. When Redis does
not hold the state this worker last wrote (first flush of a process, or Redis restarted
and lost it), the worker writes a snapshot of its whole cache instead: Redis heals itself,
and readers replace what they knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import redis

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from services.kv.stream import MAXLEN, PUBLISH_LUA, KVKeys, state_value
from services.wire import events_batch, snapshot_batch

log = logging.getLogger(__name__)

# Runs on the engine thread: returns (seq, every cached hash) and drops the buffered
# events (all of them are <= seq, so the snapshot covers them).
SnapshotFn = Callable[[], Awaitable[tuple[int, list[int]]]]


class KVPublisher:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        started_at_ms: int,
        prefix: str = "tandem",
        ttl_s: float = 30.0,
        keepalive_s: float = 1.0,
    ) -> None:
        self._r = client
        self._script = client.register_script(PUBLISH_LUA)
        self.worker_id = worker_id
        self.started_at_ms = started_at_ms
        self.keys = KVKeys.of(worker_id, prefix)
        self._ttl_ms = int(ttl_s * 1000)
        self._keepalive_s = keepalive_s
        self._lock = threading.Lock()
        self._buffer: list[KVEvent] = []
        self._seq: int | None = None  # last seq in Redis; None: write a snapshot next
        self._last_write = 0.0
        self.num_snapshots = 0

    # ---- engine thread -----------------------------------------------------------------
    def on_event(self, event: KVEvent) -> None:
        with self._lock:
            self._buffer.append(event)

    def take_snapshot(self, seq: int, hashes: list[int]) -> tuple[int, list[int]]:
        """Engine thread: the cache as of `seq`; buffered events are all covered by it."""
        with self._lock:
            self._buffer.clear()
        return seq, hashes

    # ---- asyncio -------------------------------------------------------------------------
    async def flush(self, snapshot: SnapshotFn) -> None:
        if self._seq is None:
            await self._write_snapshot(snapshot)
            return
        with self._lock:
            events, self._buffer = self._buffer, []
        if not events and time.monotonic() - self._last_write < self._keepalive_s:
            return
        ok = await asyncio.to_thread(self._write_events, events)
        if not ok:
            log.warning("%s: Redis lost this worker's KV state; writing a snapshot", self.worker_id)
            await self._write_snapshot(snapshot)

    async def run(
        self, snapshot: SnapshotFn, stop: asyncio.Event, interval_s: float = 0.05
    ) -> None:
        """Flush every `interval_s` until `stop`; Redis errors are logged and retried (the
        events stay buffered, and a Redis that came back empty gets a snapshot)."""
        while not stop.is_set():
            try:
                await self.flush(snapshot)
            except redis.RedisError as e:
                log.warning("%s: publishing KV events failed: %s", self.worker_id, e)
                self._seq = None  # whatever Redis holds now, start again from a snapshot
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def _write_snapshot(self, snapshot: SnapshotFn) -> None:
        seq, hashes = await snapshot()
        batch = snapshot_batch(self.worker_id, self.started_at_ms, seq, hashes)
        await asyncio.to_thread(self._call, "", seq, batch, True, hashes, ())
        self._seq = seq
        self.num_snapshots += 1

    def _write_events(self, events: Sequence[KVEvent]) -> bool:
        assert self._seq is not None
        seq = events[-1].seq if events else self._seq
        batch = events_batch(self.worker_id, self.started_at_ms, seq, events)
        clear, added, removed = _net_change(events)
        expected = state_value(self.started_at_ms, self._seq)
        if not self._call(expected, seq, batch, clear, added, removed):
            return False
        self._seq = seq
        return True

    def _call(
        self,
        expected: str,
        seq: int,
        batch: bytes,  # a serialized KVEventBatch
        clear: bool,
        added: Sequence[int],
        removed: Sequence[int],
    ) -> bool:
        k = self.keys
        args: list[str | int | bytes] = [
            expected,
            state_value(self.started_at_ms, seq),
            batch,
            MAXLEN,
            self._ttl_ms,
            "1" if clear else "0",
            len(added),
            *added,
            *removed,
        ]
        ok = bool(self._script(keys=[k.stream, k.blocks, k.state], args=args))
        if ok:
            self._last_write = time.monotonic()
        return ok

    def remove(self) -> None:
        """A clean shutdown: the worker's KV state leaves Redis now, not at its TTL."""
        k = self.keys
        self._r.delete(k.stream, k.blocks, k.state)


def _net_change(events: Sequence[KVEvent]) -> tuple[bool, list[int], list[int]]:
    """What a batch does to the :blocks set: (clear it first?, hashes added, removed)."""
    clear = False
    added: dict[int, None] = {}
    removed: dict[int, None] = {}
    for e in events:
        if isinstance(e, BlockStored):
            added[e.block_hash] = None
            removed.pop(e.block_hash, None)
        elif isinstance(e, BlockRemoved):
            added.pop(e.block_hash, None)
            removed[e.block_hash] = None
        elif isinstance(e, AllBlocksCleared):
            clear = True
            added.clear()
            removed.clear()
    return clear, list(added), list(removed)
