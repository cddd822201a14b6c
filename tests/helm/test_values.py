"""Values: the schema refuses typos and wrong types, the chart refuses combinations that
cannot work (with a message saying why), and every value file an earlier version of the
chart accepted still renders (tests/helm/values/compat/)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.crds import kuberay_rule_errors
from tests.helm.manifests import CHART_DIR, VALUES_DIR, load_values, render

COMPAT_DIR = VALUES_DIR / "compat"


def _set(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} from "a.b"."""
    out: dict[str, Any] = {}
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return out


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"router": {"replica": 2}}, "replica"),  # a typo of replicas
        ({"routr": {"replicas": 2}}, "routr"),
        (_set("router.replicas", "two"), "/router/replicas"),
        (_set("router.replicas", 0), "/router/replicas"),
        (_set("router.routing", "fastest"), "/router/routing"),
        (_set("router.metrics.public", "yes"), "/router/metrics/public"),
        (_set("workers.prefill.gpus", -1), "/workers/prefill/gpus"),
        (_set("workers.decode.gpu", 1), "gpu"),
        (_set("workers.prefill.groupName", "Prefill_Pool"), "/workers/prefill/groupName"),
        (_set("workers.rdma.onTcpFallback", "ignore"), "/workers/rdma/onTcpFallback"),
        (_set("workers.shmSizeLimit", "lots"), "/workers/shmSizeLimit"),
        (_set("workers.port", 70000), "/workers/port"),
        (_set("model.maxModelLen", 0), "/model/maxModelLen"),
        (_set("redis.external.url", "redis://:hunter2@redis:6379/0"), "/redis/external/url"),
        (_set("autoscaler.kvTarget", 1.5), "/autoscaler/kvTarget"),
        (_set("networkPolicy.kubeApiServer.cidrs", ["everywhere"]), "/networkPolicy"),
        (_set("image.pullPolicy", "Sometimes"), "/image/pullPolicy"),
        (_set("ingress.hosts", [{"host": "x", "paths": [{"path": "v1"}]}]), "/ingress/hosts"),
    ],
)
def test_schema_refuses(chart: helm_python.Chart, values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=named):
        chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError):
        render(chart, values)


def test_every_default_is_in_the_schema(chart: helm_python.Chart) -> None:
    """The defaults pass, and every object of values.yaml is closed (no unknown keys)."""
    chart.validate_schema(chart.values)
    schema = chart.schema
    assert schema is not None

    def closed(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in node["properties"].items():
                closed(child, f"{where}.{key}")

    closed(schema, "values")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _set("router.terminationGracePeriodSeconds", 30),
            "router.terminationGracePeriodSeconds is 30 but must be at least 70 "
            "(router.drainDelaySeconds + router.drainTimeoutSeconds + a 5 s margin)",
        ),
        (
            {"workers": {"drainTimeoutSeconds": 120, "terminationGracePeriodSeconds": 90}},
            "workers.terminationGracePeriodSeconds is 90 but must be at least 125",
        ),
        (
            {
                "workers": {
                    "prefill": {"tensorParallelSize": 2, "gpus": 2},
                    "decode": {"tensorParallelSize": 3, "gpus": 3},
                }
            },
            "workers.prefill.tensorParallelSize (2) and workers.decode.tensorParallelSize (3): "
            "one must divide the other",
        ),
        (
            _set("workers.decode.tensorParallelSize", 2),
            "workers.decode.gpus (1) must be at least workers.decode.tensorParallelSize (2)",
        ),
        (
            {"workers": {"prefill": {"replicas": 5, "maxReplicas": 4}}},
            "workers.prefill: minReplicas (0) <= replicas (5) <= maxReplicas (4) does not hold",
        ),
        (
            _set("workers.decode.groupName", "prefill"),
            "need distinct names",
        ),
        (_set("redis.enabled", False), "set redis.external.url"),
        (_set("redis.external.url", "redis://r:6379/0"), "set redis.enabled=false"),
        (_set("model.name", "Qwen/Qwen2.5-7B-Instruct"), "model.cache.enabled is false"),
        (
            {"model": {"cache": {"enabled": True}, "download": {"enabled": True}}},
            "model.download.enabled needs",
        ),
        (
            {"workers": {"decode": {"replicas": 0, "minReplicas": 0}}},
            "workers.decode.minReplicas is 0: set model.maxModelLen",
        ),
        (
            {"router": {"auth": {"enabled": False}, "maxRequestsPerKey": 8}},
            "it needs router.auth.enabled",
        ),
        (
            {
                "serviceMonitor": {"enabled": True},
                "router": {"auth": {"existingSecret": "keys"}},
            },
            "set serviceMonitor.apiKeySecret",
        ),
    ],
)
def test_chart_refuses_what_cannot_work(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    chart.validate_schema(values)  # each is well-typed: the chart's own rules refuse it
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render(chart, values)
    assert message in str(refused.value)


def test_grace_period_equal_to_the_drain_plus_margin_is_enough(chart: helm_python.Chart) -> None:
    values = {
        "router": {"drainDelaySeconds": 10, "drainTimeoutSeconds": 20},
        "workers": {"drainTimeoutSeconds": 40, "terminationGracePeriodSeconds": 45},
    }
    values["router"]["terminationGracePeriodSeconds"] = 35
    rendered = render(chart, values)
    assert kuberay_rule_errors(rendered.raycluster()) == []
    too_short = copy.deepcopy(values)
    too_short["workers"]["terminationGracePeriodSeconds"] = 44
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, too_short)


def _compat_files() -> list[Path]:
    return sorted(COMPAT_DIR.glob("*.yaml"))


def test_compat_fixtures_cover_the_published_examples() -> None:
    """The examples the chart ships are frozen into compat/ as they were first published."""
    names = {p.name for p in _compat_files()}
    assert {"values-cpu-kind.yaml", "values-large.yaml"} <= names
    assert len(names) >= 10


@pytest.mark.parametrize("path", _compat_files(), ids=lambda p: p.stem)
def test_earlier_value_files_still_render(chart: helm_python.Chart, path: Path) -> None:
    values = load_values(path)
    chart.validate_schema(values)
    rendered = render(chart, values)
    assert rendered.has("RayCluster")
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version="v1.31.0")
    assert report["errors"] == []
