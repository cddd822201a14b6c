"""What the autoscaler exports: per pool, the replicas it wants and those serving, each
decision by direction, and the signals it decided on. A private registry, as the router's:
`tandem serve --autoscale` serves it beside the router's own on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.desired = Gauge(
            "tandem_autoscaler_desired_replicas",
            "Replicas the autoscaler set.",
            ["pool"],
            registry=r,
        )
        self.ready = Gauge(
            "tandem_autoscaler_ready_replicas",
            "Workers of the pool in the registry.",
            ["pool"],
            registry=r,
        )
        self.decisions = Counter(
            "tandem_autoscaler_decisions",
            "Decisions by pool and direction (up, down, hold, bounds, cancel).",
            ["pool", "direction"],
            registry=r,
        )
        self.signal = Gauge(
            "tandem_autoscaler_signal",
            "The figures of the last decision: prefill_tok_s (demand), requests, used_blocks, "
            "worker_prefill_tok_s, predicted_itl_s, held_requests, tail_blocks (a p90 request's), "
            "arrival_rate_panic and arrival_rate_stable (requests/s; NaN: no figures), "
            "forecast_requests and forecast_prefill_tok_s (what the panic window's rate brings), "
            "arrival_asked_output_tokens (the mean max_tokens arriving), request_lifetime_s "
            "(a long request's, as the stable window's arrivals say: forecast.arriving), "
            "arrival_local_prompt_share (of the prompt tokens arriving over the stable window, "
            "those the serving pool prefills whatever the prefill pool's size: short prompts).",
            ["name"],
            registry=r,
        )
