"""Build the router's backend from flags: registry, worker set, KV index + feed, policy."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from services.cluster.registry import Registry
from services.kv.feed import KVFeed
from services.kv.index import KVIndex
from services.router.dispatch import DispatchConfig, Dispatcher
from services.router.metrics import RouterMetrics
from services.router.routing import Policy
from services.router.workers import WorkerSet


def make_dispatcher(redis_url: str, config: DispatchConfig, metrics: RouterMetrics) -> Dispatcher:
    """Only `kv` routing reads KV events: the other modes are the cache-blind baselines
    it is measured against."""
    workers = WorkerSet(Registry(redis.Redis.from_url(redis_url)))
    feed = None
    if config.routing == "kv":
        feed = KVFeed(aioredis.Redis.from_url(redis_url), KVIndex(), workers.dump_kv)
    policy = Policy(config.routing, feed.index if feed else None)
    return Dispatcher(workers, config, metrics, policy, feed)
