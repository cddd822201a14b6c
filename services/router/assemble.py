"""Build the router's backend from flags: registry, worker set, KV index + feed, policy,
the cluster view that keeps them fresh, and the dispatcher that uses them."""

from __future__ import annotations

from services.cluster import redis_client
from services.cluster.arrivals import Arrivals
from services.cluster.held_requests import HeldRequests
from services.cluster.registry import Registry
from services.kv.feed import KVFeed
from services.kv.index import KVIndex
from services.router.arrivals import ArrivalCounter
from services.router.cluster_view import ClusterView
from services.router.cold_start import ColdStart
from services.router.dispatch import Dispatcher
from services.router.dispatch_config import DispatchConfig
from services.router.metrics import RouterMetrics
from services.router.routing import Policy
from services.router.workers import WorkerSet


def make_dispatcher(
    redis_url: str,
    config: DispatchConfig,
    metrics: RouterMetrics,
    token: str | None = None,
    worker_ca: bytes | None = None,
) -> Dispatcher:
    """Only `kv` routing reads KV events: the other modes are the cache-blind baselines
    it is measured against."""
    # Records not signed with `token` are skipped (a forged worker gets no prompts), counted.
    redis = redis_client.connect(redis_url)
    registry = Registry(redis, token=token, on_rejected=metrics.registry_rejected.inc)
    workers = WorkerSet(registry, token, worker_ca)
    feed = None
    if config.routing == "kv":
        feed = KVFeed(redis_client.connect_async(redis_url), KVIndex(), workers.dump_kv)
    policy = Policy(config.routing, feed.index if feed else None)
    # A departed worker's predicted blocks go with it (a restart must not inherit them).
    cluster = ClusterView(
        workers, metrics, feed, config.refresh_s, policy.predicted.forget, config.health_s
    )
    cold_start = ColdStart(
        config.hold_for_worker_s, config.max_held_requests, metrics, HeldRequests(redis).publish
    )
    arrivals = ArrivalCounter(Arrivals(redis).publish)
    return Dispatcher(cluster, config, metrics, policy, cold_start, arrivals)
