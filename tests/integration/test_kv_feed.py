"""The KV index's freshness, end to end through a real Redis: a worker's real block pool
publishes through KVPublisher (the code a worker runs), routers follow with KVFeed.

What stands in for the worker's process here is only the gRPC hop of DumpKV: the resync
function answers from the same block pool, with the same KVDump, as the rpc does (the
rpc itself is exercised with real worker processes in test_kv_routing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from engine.block_pool import BlockPool
from engine.hashing import chain_hashes
from services.cluster.redis_server import RedisServer
from services.kv.feed import KVFeed
from services.kv.index import KVIndex
from services.kv.stream import KVKeys
from services.wire import KVDump
from services.worker.kv_publisher import KVPublisher

T = TypeVar("T")
BS = 4  # tokens per block: small prompts, many blocks


class KVWorker:
    """A worker's KV side: a real block pool and the publisher a worker runs."""

    _clock = itertools.count(int(time.time() * 1000))

    def __init__(self, client: redis.Redis, worker_id: str, prefix: str, blocks: int = 64):
        self.worker_id = worker_id
        self.started_at_ms = next(self._clock)
        self.publisher = KVPublisher(client, worker_id, self.started_at_ms, prefix)
        self.pool = BlockPool(blocks, on_event=self.publisher.on_event)
        self._requests: list[list[int]] = []

    async def snapshot(self) -> tuple[int, list[int]]:
        return self.publisher.take_snapshot(self.pool.event_seq, self.pool.cached_hashes())

    async def flush(self) -> None:
        await self.publisher.flush(self.snapshot)

    async def dump(self, worker_id: str) -> KVDump:
        assert worker_id == self.worker_id
        return KVDump(
            worker_id=self.worker_id,
            started_at_unix_ms=self.started_at_ms,
            seq=self.pool.event_seq,
            block_hashes=self.pool.cached_hashes(),
            block_size=BS,
        )

    def run_prompt(self, tokens: list[int]) -> list[int]:
        """What the scheduler does for a prompt: reuse hits, compute and commit the rest,
        then release (the blocks stay cached until evicted)."""
        hashes = chain_hashes(tokens, BS)
        hits = self.pool.lookup_prefix(hashes)
        self.pool.acquire(hits)
        blocks = hits + self.pool.allocate(len(hashes) - len(hits))
        for i in range(len(hits), len(hashes)):
            self.pool.commit(blocks[i], hashes[i], hashes[i - 1] if i else None, [])
        self.pool.release(blocks)
        return hashes


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _prompt(system: int, user: int, n_user_blocks: int = 3) -> list[int]:
    return [1000 + system] * (4 * BS) + [user * 7 + i for i in range(n_user_blocks * BS)]


def _assert_matches(index: KVIndex, w: KVWorker, prompts: list[list[int]]) -> None:
    assert index.blocks_of(w.worker_id) == w.pool.num_cached_blocks
    for p in prompts:
        hashes = chain_hashes(p, BS)
        want = len(w.pool.lookup_prefix(hashes))
        assert index.lookup(hashes).get(w.worker_id, 0) == want


async def _poll_until(feed: KVFeed, done: Callable[[], bool], rounds: int = 50) -> None:
    for _ in range(rounds):  # bounded: 50 polls of at most 20 ms each
        if done():
            return
        await feed.poll()
        await asyncio.sleep(0)
    assert done()


def _run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _feed(
    url: str, prefix: str, resync: Callable[[str], Awaitable[KVDump]], restart_check_s: float = 1.0
) -> KVFeed:
    client = aioredis.Redis.from_url(url)
    return KVFeed(client, KVIndex(), resync, prefix, block_ms=20, restart_check_s=restart_check_s)


def test_events_in_order_keep_the_index_equal_to_the_pool(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        w = KVWorker(redis.Redis.from_url(redis_url), "p-0", prefix, blocks=24)
        await w.flush()
        feed = _feed(redis_url, prefix, w.dump)
        await feed.sync(["p-0"])
        prompts = [_prompt(s, u) for s in range(3) for u in range(4)]
        for p in prompts:  # 12 prompts of 7 blocks into 24 blocks: evictions happen
            w.run_prompt(p)
            await w.flush()
        await _poll_until(feed, lambda: feed._follows["p-0"].seq == w.pool.event_seq)
        _assert_matches(feed.index, w, prompts)
        assert sum(feed.resyncs.values()) == 0
        feed.index.check_integrity()

    _run(go())


def test_a_gap_resyncs_from_the_worker(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        w = KVWorker(client, "p-0", prefix)
        await w.flush()
        feed = _feed(redis_url, prefix, w.dump)
        await feed.sync(["p-0"])
        w.run_prompt(_prompt(0, 0))
        await w.flush()
        lost = client.xrevrange(KVKeys.of("p-0", prefix).stream, count=1)[0][0]
        client.xdel(KVKeys.of("p-0", prefix).stream, lost)  # the feed never sees it
        w.run_prompt(_prompt(1, 1))
        await w.flush()
        await _poll_until(feed, lambda: feed.resyncs["gap"] == 1)
        await _poll_until(feed, lambda: feed._follows["p-0"].resync is None)
        _assert_matches(feed.index, w, [_prompt(0, 0), _prompt(1, 1)])
        w.run_prompt(_prompt(2, 2))  # and it goes on from the dump's seq
        await w.flush()
        await _poll_until(feed, lambda: feed._follows["p-0"].seq == w.pool.event_seq)
        _assert_matches(feed.index, w, [_prompt(s, s) for s in range(3)])
        assert feed.resyncs["gap"] == 1

    _run(go())


def test_a_batch_straddling_the_resync_applies_only_its_newer_events(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        w = KVWorker(client, "p-0", prefix)

        async def dump_then_more(worker_id: str) -> KVDump:
            state = await w.dump(worker_id)
            w.run_prompt(_prompt(3, 3))  # after the dump, before the next flush
            return state

        await w.flush()
        feed = _feed(redis_url, prefix, dump_then_more)
        await feed.sync(["p-0"])
        w.run_prompt(_prompt(0, 0))
        await w.flush()
        lost = client.xrevrange(KVKeys.of("p-0", prefix).stream, count=1)[0][0]
        client.xdel(KVKeys.of("p-0", prefix).stream, lost)
        w.run_prompt(_prompt(1, 1))
        await w.flush()
        w.run_prompt(_prompt(2, 2))  # in the dump, not flushed yet
        await _poll_until(feed, lambda: feed.resyncs["gap"] == 1)
        await _poll_until(feed, lambda: feed._follows["p-0"].resync is None)
        dumped, applied = feed._follows["p-0"].seq, feed.events
        await w.flush()  # one batch: prompt 2's events (dumped already), then prompt 3's
        await _poll_until(feed, lambda: feed._follows["p-0"].seq == w.pool.event_seq)
        assert dumped is not None and dumped < w.pool.event_seq
        assert feed.events - applied == w.pool.event_seq - dumped  # the newer ones alone
        _assert_matches(feed.index, w, [_prompt(s, s) for s in range(4)])
        assert sum(feed.resyncs.values()) == 1
        feed.index.check_integrity()

    _run(go())


def test_a_late_router_and_an_early_one_agree(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        workers = [KVWorker(client, f"p-{i}", prefix) for i in range(3)]
        dumps = {w.worker_id: w for w in workers}

        async def dump(worker_id: str) -> KVDump:
            return await dumps[worker_id].dump(worker_id)

        for w in workers:
            await w.flush()
        early = _feed(redis_url, prefix, dump)
        await early.sync(dumps)
        prompts = [_prompt(s, u) for s in range(2) for u in range(3)]
        for i, p in enumerate(prompts):
            workers[i % 3].run_prompt(p)
            workers[(i + 1) % 3].run_prompt(p[: 5 * BS])
            for w in workers:
                await w.flush()
        late = _feed(redis_url, prefix, dump)  # starts from Redis alone
        await late.sync(dumps)
        await _poll_until(
            early, lambda: all(early._follows[w.worker_id].seq == w.pool.event_seq for w in workers)
        )
        for p in prompts:
            hashes = chain_hashes(p, BS)
            assert early.index.lookup(hashes) == late.index.lookup(hashes)
            assert early.index.lookup(hashes)  # and they found something
        for w in workers:
            _assert_matches(late.index, w, prompts)
        assert sum(late.resyncs.values()) == 0  # Redis alone was enough

    _run(go())


def test_a_worker_that_leaves_is_purged_and_one_that_falls_silent_expires(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        a, b = KVWorker(client, "p-a", prefix), KVWorker(client, "p-b", prefix)
        dumps = {"p-a": a, "p-b": b}

        async def dump(worker_id: str) -> KVDump:
            return await dumps[worker_id].dump(worker_id)

        for w in (a, b):
            w.run_prompt(_prompt(0, 0))
            await w.flush()
        feed = _feed(redis_url, prefix, dump)
        await feed.sync(dumps)
        hashes = chain_hashes(_prompt(0, 0), BS)
        assert set(feed.index.lookup(hashes)) == {"p-a", "p-b"}
        await feed.sync(["p-a"])  # p-b left the registry
        assert set(feed.index.lookup(hashes)) == {"p-a"}
        assert feed.index.blocks_of("p-b") == 0

        feed.expire(time.monotonic() + feed.expiry_s + 1)  # p-a silent past its expiry
        assert feed.index.lookup(hashes) == {}
        assert feed.expired == 1
        a.publisher._last_write = 0.0  # its next flush is a keepalive: it speaks again
        await a.flush()
        await _poll_until(feed, lambda: feed.index.blocks_of("p-a") > 0)
        assert feed.resyncs["unknown"] == 1
        _assert_matches(feed.index, a, [_prompt(0, 0)])

    _run(go())


def test_a_restarted_worker_replaces_its_old_state(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        old = KVWorker(client, "p-0", prefix)
        old.run_prompt(_prompt(0, 0))
        await old.flush()
        feed = _feed(redis_url, prefix, old.dump)
        await feed.sync(["p-0"])
        assert feed.index.blocks_of("p-0") == old.pool.num_cached_blocks > 0
        new = KVWorker(client, "p-0", prefix)  # same id, a new process
        await new.flush()  # its first write is a snapshot: an empty cache
        await _poll_until(feed, lambda: feed.index.blocks_of("p-0") == 0)
        assert feed._follows["p-0"].started_at_ms == new.started_at_ms

    _run(go())


def test_memory_stays_bounded_while_workers_come_and_go(redis_url: str) -> None:
    async def go() -> None:
        prefix = _prefix()
        client = redis.Redis.from_url(redis_url)
        feed = _feed(redis_url, prefix, _no_resync)
        steady = KVWorker(client, "p-steady", prefix)
        steady.run_prompt(_prompt(0, 0))
        await steady.flush()
        await feed.sync(["p-steady"])
        baseline = (feed.index.num_entries, feed.index.num_hashes)
        peak = 0
        for round_ in range(40):  # bounded churn: 40 workers join, publish and leave
            w = KVWorker(client, f"p-{round_}", prefix)
            for u in range(5):
                w.run_prompt(_prompt(round_, u))
            await w.flush()
            await feed.sync(["p-steady", w.worker_id])
            await feed.poll()
            assert feed.index.blocks_of(w.worker_id) == w.pool.num_cached_blocks > 0
            peak = max(peak, feed.index.num_entries)
            await feed.sync(["p-steady"])
            w.publisher.remove()
        assert (feed.index.num_entries, feed.index.num_hashes) == baseline
        assert feed.followed == ["p-steady"]
        assert peak <= baseline[0] + 64  # one worker's pool at a time, never the sum
        assert not list(client.scan_iter(match=f"{prefix}:kv:p-[0-9]*"))  # Redis too
        feed.index.check_integrity()

    _run(go())


async def _no_resync(worker_id: str) -> KVDump:
    raise AssertionError(f"no resync expected ({worker_id})")


def test_redis_restart_heals_from_worker_snapshots() -> None:
    async def go() -> None:
        server = RedisServer()
        port = server.port
        try:
            client = redis.Redis.from_url(server.url)
            w = KVWorker(client, "p-0", "tandem")
            w.run_prompt(_prompt(0, 0))
            await w.flush()
            feed = _feed(server.url, "tandem", w.dump, restart_check_s=0.0)
            await feed.sync(["p-0"])
            await feed.poll()
            server.stop()
            # empty: everything in Redis is gone; the same password, which clients hold
            server = RedisServer(port=port, password=server.password)
            w.run_prompt(_prompt(1, 1))
            w.publisher._last_write = 0.0
            await w.flush()  # Redis lost the state: the worker writes a snapshot
            assert w.publisher.num_snapshots == 2
            # redis-py may reconnect by itself or raise; either way the next look at the
            # server's run_id (every poll here) finds the restart and rereads every stream
            for _ in range(2):  # bounded: a raise, then a poll on the new connection
                with contextlib.suppress(redis.ConnectionError):
                    await feed.poll()
            assert feed.redis_restarts == 1
            await _poll_until(feed, lambda: feed._follows["p-0"].seq == w.pool.event_seq)
            _assert_matches(feed.index, w, [_prompt(0, 0), _prompt(1, 1)])
            late = _feed(server.url, "tandem", _no_resync)
            await late.sync(["p-0"])
            _assert_matches(late.index, w, [_prompt(0, 0), _prompt(1, 1)])
        finally:
            server.stop()

    _run(go())
