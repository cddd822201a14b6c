"""The cluster's metrics as a dashboard reads them: the router's request figures under
vLLM's names with the served model's name, each worker's own /metrics found through the
router, vLLM's dashboard's queries answered after the documented relabel, and a request's
start split into the workers' stages, in its usage."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.prometheus import Series, parse_metrics
from tests.e2e.conftest import MODEL, Served

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Long enough to be prefilled on the prefill worker (the cluster's --local-prefill-tokens).
REMOTE = "Count slowly from one to twenty, writing every number as a word and a digit: " * 2
LOCAL = "Hi"
# What vLLM's Grafana dashboard (examples/online_serving/prometheus_grafana in vLLM's
# repository, the version for vLLM's v1 engine) queries, each with model_name="$model_name".
VLLM_DASHBOARD = (
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:kv_cache_usage_perc",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_success_total",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_max_num_generation_tokens_sum",
)


def _timed(c: httpx.Client, prompt: str) -> dict[str, float | None]:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "include_timing": True,
    }
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    timing: dict[str, float | None] = r.json()["usage"]["timing"]
    return timing


def test_usage_splits_a_request_start_into_the_workers_stages(cluster: Served) -> None:
    with cluster.client() as c:
        remote, local = _timed(c, REMOTE), _timed(c, LOCAL)
        plain = c.post("/v1/completions", json={"model": MODEL, "prompt": LOCAL, "max_tokens": 2})
    assert "timing" not in plain.json()["usage"]  # asked for only
    for t in (remote, local):
        ttft, queue, prefill = t["ttft_s"], t["queue_s"], t["prefill_s"]
        assert ttft is not None and queue is not None and prefill is not None, t
        assert queue >= 0 and prefill > 0
        # the workers' part lies inside the router's time to first token
        assert queue + prefill <= ttft, t
    # Disaggregated: the decode worker waited for the KV, then ran its first step.
    assert remote["kv_transfer_s"] is not None and remote["kv_transfer_s"] >= 0, remote
    assert remote["first_decode_s"] is not None and remote["first_decode_s"] > 0, remote
    # Prefilled where it decodes: no transfer, no separate first step.
    assert local["kv_transfer_s"] is None and local["first_decode_s"] is None, local


def _scrape(url: str, headers: dict[str, str] | None = None) -> dict[Series, float]:
    r = httpx.get(url, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


def _cluster_samples(cluster: Served) -> tuple[dict[Series, float], list[dict[Series, float]]]:
    """The router's /metrics and every worker's own, found through /metrics/workers."""
    with cluster.client() as c:
        router = parse_metrics(c.get("/metrics").text)
        groups = c.get("/metrics/workers").json()
    roles = sorted(g["labels"]["role"] for g in groups)
    assert roles == ["decode", "prefill"], groups
    return router, [_scrape(f"http://{g['targets'][0]}/metrics") for g in groups]


def _value(samples: dict[Series, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert found, f"no {name} with {labels}"
    return sum(found)


def test_router_and_workers_label_their_figures_with_the_model(cluster: Served) -> None:
    with cluster.client() as c:
        _timed(c, REMOTE)
    router, workers = _cluster_samples(cluster)
    assert _value(router, "tandem:time_to_first_token_seconds_count", model_name=MODEL) >= 1
    assert _value(router, "tandem:request_kv_transfer_time_seconds_count", model_name=MODEL) >= 1
    assert _value(router, "tandem:request_success_total", finished_reason="length") >= 1
    for samples in workers:
        usage = _value(samples, "tandem:kv_cache_usage_perc", model_name=MODEL)
        assert 0.0 <= usage <= 1.0
        assert _value(samples, "tandem:num_requests_running", model_name=MODEL) >= 0
    # The prefill worker looked every remote prompt up in its prefix cache.
    queried = [_value(s, "tandem:prefix_cache_queries_total") for s in workers]
    assert max(queried) > 0


def _relabelled(name: str) -> str:
    """deploy/prometheus/vllm-names.yaml's rule, applied as Prometheus applies it."""
    (rule,) = yaml.safe_load((ROOT / "deploy/prometheus/vllm-names.yaml").read_text())
    assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__"
    m = re.fullmatch(rule["regex"], name)
    return m.expand(rule["replacement"].replace("$1", r"\1")) if m else name


def test_vllm_dashboard_queries_find_every_figure_after_the_relabel(cluster: Served) -> None:
    with cluster.client() as c:
        _timed(c, REMOTE)
    router, workers = _cluster_samples(cluster)
    models: dict[str, set[str]] = {}  # relabelled sample name -> its model_name labels
    for samples in (router, *workers):
        for (name, labels), _ in samples.items():
            models.setdefault(_relabelled(name), set()).add(dict(labels).get("model_name", ""))
    missing = [n for n in VLLM_DASHBOARD if MODEL not in models.get(n, set())]
    assert not missing, missing
