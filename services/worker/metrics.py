"""A worker's own /metrics: its engine's figures, on a port of its own.

The engine-side families of vLLM's dashboards (vllm/v1/metrics/loggers.py in vLLM 0.32),
with `tandem:` for `vllm:`: running and waiting requests, KV-cache usage, preemptions and
prefix-cache lookups; and Tandem's own: blocks held for readers, KV reads, and the engine's
busy time by kind of step. Labelled `model_name` (the served name, as the router's), and
`worker_id` and `role` where vLLM says `engine`.

Read at scrape time from the stats snapshot the engine thread leaves every few ms
(core.py): a scrape never waits behind a step, and a step pays nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.worker.stats import WorkerStats

log = logging.getLogger(__name__)
LABELS = ("model_name", "worker_id", "role")


class WorkerCollector(Collector):
    def __init__(self, stats: Callable[[], WorkerStats], labels: tuple[str, str, str]) -> None:
        self._stats, self._labels = stats, list(labels)

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield self._gauge("tandem:num_requests_running", "Requests in the batch.", s.running)
        yield self._gauge("tandem:num_requests_waiting", "Requests not admitted yet.", s.waiting)
        yield self._gauge(
            "tandem:kv_cache_usage_perc",
            "Fraction of the KV cache's blocks in use (1 = full).",
            s.used_blocks / s.num_blocks if s.num_blocks else 0.0,
        )
        a = s.admissions
        yield self._counter("tandem:num_preemptions", "Requests preempted.", a.preemptions)
        yield self._counter(
            "tandem:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            a.prefix_queried_tokens,
        )
        yield self._counter(
            "tandem:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            a.prefix_hit_tokens,
        )
        yield from self._own(s)

    def _own(self, s: WorkerStats) -> Iterable[Metric]:
        """Tandem's figures, beyond vLLM's."""
        yield self._gauge(
            "tandem_worker_held_blocks", "KV blocks held for a decode worker's read.", s.held_blocks
        )
        yield self._counter("tandem_worker_kv_reads", "KV reads from peers (NIXL).", s.kv_reads)
        yield self._counter(
            "tandem_worker_kv_read_bytes", "Bytes read from peers (NIXL).", s.kv_bytes_read
        )
        yield self._counter(
            "tandem_worker_kv_recomputed", "Prompts recomputed: their read failed.", s.kv_recomputed
        )
        t = s.totals
        yield self._counter(
            "tandem_worker_prefill_tokens", "Prompt tokens computed.", t.prefill_tokens
        )
        yield self._counter(
            "tandem_worker_prefill_busy_seconds",
            "Time in steps with a prompt chunk.",
            t.prefill_busy_s,
        )
        yield self._counter(
            "tandem_worker_decode_busy_seconds", "Time in steps of single tokens.", t.decode_busy_s
        )

    def _gauge(self, name: str, doc: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=LABELS)
        family.add_metric(self._labels, value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> Metric:
        family = CounterMetricFamily(name, doc, labels=LABELS)
        family.add_metric(self._labels, value)
        return family


def serve_metrics(
    stats: Callable[[], WorkerStats], labels: tuple[str, str, str], host: str, port: int
) -> tuple[WSGIServer, int]:
    """/metrics on `host:port` (0: a free port) from a thread of prometheus_client's; the
    server (shut it down on stop) and the port it took."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(stats, labels))
    server, _ = start_http_server(port, host, registry)
    taken = server.server_address[1]
    log.info("worker metrics on %s:%d/metrics", host, taken)
    return server, int(taken)
