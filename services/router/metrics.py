"""The router's Prometheus metrics, in a registry of its own.

A private `CollectorRegistry` (not prometheus_client's global one) keeps two routers in one
process (tests) from colliding and keeps `/metrics` to what Tandem itself measures.

The HTTP edge records each request's latencies and token counts (`edge`, under vLLM's names:
request_metrics.py) and its route; the dispatcher records queue depth, KV block usage,
NIXL transfers and recomputes through the `set_*` / `record_*`
methods below (or the metric attributes themselves, which are public).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.router.request_metrics import RequestMetrics

TRANSFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Request outcomes (the `status` label of tandem_requests_total).
OK, ERROR, ABORTED = "ok", "error", "aborted"


class RouterMetrics:
    def __init__(self, model_name: str, extra: Sequence[CollectorRegistry] = ()) -> None:
        """`model_name`: the served model name, the label of every request's figures;
        `extra`: registries served on /metrics too (the autoscaler's, in tandem serve)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra = tuple(extra)
        r = self.registry
        # ---- updated by the HTTP edge ----
        self.edge = RequestMetrics(r, model_name)  # vLLM's figures (request_metrics.py)
        self.requests = Counter(
            "tandem_requests",
            "Requests sent to the model, by route and outcome.",
            ["route", "status"],
            registry=r,
        )
        self.http_errors = Counter(
            "tandem_http_errors", "Error responses, by HTTP status.", ["status"], registry=r
        )
        # ---- updated by the dispatcher ----
        self.queue_depth = Gauge(
            "tandem_queue_depth", "Requests waiting, by pool.", ["pool"], registry=r
        )
        self.kv_blocks_used = Gauge(
            "tandem_kv_blocks_used", "KV-cache blocks in use, by worker.", ["worker"], registry=r
        )
        self.kv_blocks_total = Gauge(
            "tandem_kv_blocks_total", "KV-cache blocks, by worker.", ["worker"], registry=r
        )
        self.nixl_bytes = Counter(
            "tandem_nixl_bytes", "KV bytes moved between workers over NIXL.", registry=r
        )
        self.nixl_seconds = Histogram(
            "tandem_nixl_transfer_seconds",
            "Duration of one request's KV transfer.",
            buckets=TRANSFER_BUCKETS,
            registry=r,
        )
        self.kv_recomputed = Counter(
            "tandem_kv_recomputed", "Prompts recomputed after a failed KV transfer.", registry=r
        )
        self.prefill_fallbacks = Counter(
            "tandem_prefill_fallbacks",
            "Remote prefills that failed and ran on the decode worker instead, by reason.",
            ["reason"],
            registry=r,
        )
        self._routing_metrics(r)
        self._fault_metrics(r)

    def _fault_metrics(self, r: CollectorRegistry) -> None:
        self.health_check_failures = Counter(
            "tandem_worker_health_check_failures",
            "Health checks a worker failed (NOT_SERVING, an error, or no answer in time).",
            ["worker"],
            registry=r,
        )
        self.workers_unroutable = Gauge(
            "tandem_workers_unroutable",
            "Registered workers the router's health checks keep out of routing.",
            registry=r,
        )
        self.prefill_retries = Counter(
            "tandem_prefill_retries",
            "Remote prefills that failed and were tried on another prefill worker, by reason.",
            ["reason"],
            registry=r,
        )
        self.breaker_changes = Counter(
            "tandem_worker_breaker",
            "A worker's circuit breaker opening or closing (services/router/breaker.py).",
            ["worker", "change"],
            registry=r,
        )
        self.decode_retries = Counter(
            "tandem_decode_retries",
            "Requests resumed on another decode worker after theirs failed, by when it failed.",
            ["when"],
            registry=r,
        )
        self.requests_held = Gauge(
            "tandem_requests_held",
            "Requests held while their pool has no worker, until one starts (cold_start.py).",
            registry=r,
        )
        self.held_timeouts = Counter(
            "tandem_held_timeouts",
            "Held requests answered 503: no worker started within --hold-for-worker-s.",
            registry=r,
        )
        self.registry_rejected = Counter(
            "tandem_registry_rejected",
            "Reads of registry records skipped: not signed with the cluster token.",
            registry=r,
        )

    def _routing_metrics(self, r: CollectorRegistry) -> None:
        self.routed = Counter(
            "tandem_routed_requests",
            "Prompts sent to each worker, by pool.",
            ["pool", "worker"],
            registry=r,
        )
        self.routed_cached_blocks = Counter(
            "tandem_routed_cached_blocks",
            "Leading prompt blocks the chosen worker held, as the router's KV index saw it.",
            ["pool"],
            registry=r,
        )
        self.kv_index_entries = Gauge(
            "tandem_kv_index_entries",
            "(worker, block hash) pairs in the router's KV index.",
            registry=r,
        )
        self.kv_index_resyncs = Gauge(
            "tandem_kv_index_resyncs",
            "Workers resynced (DumpKV) by the KV index since start, by reason.",
            ["reason"],
            registry=r,
        )
        self.kv_index_expired = Gauge(
            "tandem_kv_index_expired",
            "Times a worker's KV entries expired because its stream went silent.",
            registry=r,
        )

    def render(self) -> bytes:
        """Prometheus text exposition format (version 0.0.4)."""
        return b"".join(generate_latest(r) for r in (self.registry, *self._extra))

    # ---- the HTTP edge ----------------------------------------------------------------
    def record_finished(self, route: str, status: str) -> None:
        self.requests.labels(route=route or "none", status=status).inc()

    def record_http_error(self, status: int) -> None:
        self.http_errors.labels(status=str(status)).inc()

    # ---- the dispatcher ---------------------------------------------------------------
    def set_queue_depth(self, pool: str, depth: int) -> None:
        self.queue_depth.labels(pool=pool).set(depth)

    def set_kv_blocks(self, worker: str, used: int, total: int) -> None:
        self.kv_blocks_used.labels(worker=worker).set(used)
        self.kv_blocks_total.labels(worker=worker).set(total)

    def forget_worker(self, worker: str) -> None:
        """A worker left: drop its series so dashboards do not show it frozen."""
        for gauge in (self.kv_blocks_used, self.kv_blocks_total):
            with contextlib.suppress(KeyError):  # never set for this worker
                gauge.remove(worker)

    def record_transfer(self, nbytes: int, seconds: float) -> None:
        self.nixl_bytes.inc(nbytes)
        self.nixl_seconds.observe(seconds)

    def record_recompute(self) -> None:
        self.kv_recomputed.inc()

    def record_route(self, pool: str, worker: str, cached_blocks: int) -> None:
        self.routed.labels(pool=pool, worker=worker).inc()
        self.routed_cached_blocks.labels(pool=pool).inc(cached_blocks)

    def set_kv_index(self, entries: int, resyncs: Mapping[str, int], expired: int) -> None:
        self.kv_index_entries.set(entries)
        for reason, n in resyncs.items():
            self.kv_index_resyncs.labels(reason=reason).set(n)
        self.kv_index_expired.set(expired)

    def record_prefill_fallback(self, reason: str) -> None:
        self.prefill_fallbacks.labels(reason=reason).inc()

    # ---- faults -------------------------------------------------------------------------
    def record_health_check_failure(self, worker: str) -> None:
        self.health_check_failures.labels(worker=worker).inc()

    def set_unroutable(self, count: int) -> None:
        self.workers_unroutable.set(count)

    def record_prefill_retry(self, reason: str) -> None:
        self.prefill_retries.labels(reason=reason).inc()

    def record_breaker(self, worker: str, change: str) -> None:
        """`change`: opened | closed."""
        self.breaker_changes.labels(worker=worker, change=change).inc()

    def record_decode_retry(self, when: str) -> None:
        """`when`: before_first_token | mid_stream."""
        self.decode_retries.labels(when=when).inc()
