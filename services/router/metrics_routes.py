"""GET /metrics (the router's own figures) and GET /metrics/workers: where each worker
serves its own (services/worker/metrics.py), in Prometheus' HTTP service-discovery format,
so that one scrape config finds a cluster whose workers come and go:

    scrape_configs:
      - job_name: tandem-workers
        http_sd_configs: [{url: "http://ROUTER:8000/metrics/workers"}]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from services.pb.events_pb2 import WorkerRecord
from services.router.metrics import RouterMetrics

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def metrics_routes(metrics: RouterMetrics, workers: Callable[[], list[WorkerRecord]]) -> APIRouter:
    r = APIRouter()

    @r.get("/metrics")
    async def router_metrics() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_TEXT)

    @r.get("/metrics/workers")
    async def worker_targets() -> JSONResponse:
        return JSONResponse(targets(workers()))

    return r


def targets(records: list[WorkerRecord]) -> list[dict[str, Any]]:
    """One target group per worker that serves metrics, labelled with its id and role."""
    return [
        {"targets": [w.metrics_address], "labels": {"worker_id": w.worker_id, "role": w.role}}
        for w in sorted(records, key=lambda w: w.worker_id)
        if w.metrics_address
    ]
