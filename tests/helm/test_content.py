"""The rest of what the rendered objects say: the model cache and its download, monitoring
(ServiceMonitor, Grafana), the `helm test` hook and NOTES."""

from __future__ import annotations

import json
import re

from tests.helm.conftest import Releases
from tests.helm.manifests import (
    Rendered,
    env_of,
    pods_of,
    selects,
    the_container,
)

# ---------------------------------------------------------------- the model


def test_model_cache_and_download(releases: Releases) -> None:
    r = releases["large"]
    (claim,) = r.all("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for pod in pods_of(r, "worker") + pods_of(r, "router"):
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"]["readOnly"] is True
        (mount,) = [
            m for m in pod.spec["containers"][0]["volumeMounts"] if m["name"] == "model-cache"
        ]
        assert mount == {"name": "model-cache", "mountPath": "/models", "readOnly": True}
        (wait,) = pod.spec["initContainers"]
        assert wait["name"] == "wait-for-model"
        env = env_of(pod.spec["containers"][0])
        assert "HF_TOKEN" not in env  # only the download Job talks to the Hub
        assert env["TANDEM_MODEL_CACHE"]["value"].startswith("/tmp/")
    (job,) = r.all("Job")
    spec = job["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert env["REPO"]["value"] == "Qwen/Qwen2.5-7B-Instruct"
    assert {v["name"]: v for v in spec["volumes"]}["model-cache"]["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"]
    }
    # An existing claim: no PVC of ours, the absolute path as it is, nothing to wait for.
    r = releases["model-on-claim"]
    assert not r.has("PersistentVolumeClaim") and not r.has("Job")
    (pod,) = pods_of(r, "router")
    assert {v["name"]: v for v in pod.spec["volumes"]}["model-cache"]["persistentVolumeClaim"][
        "claimName"
    ] == "shared-models"
    assert "initContainers" not in pod.spec
    # No model named: no cache, no --model.
    r = releases["default"]
    assert not r.has("PersistentVolumeClaim")
    for pod in pods_of(r, "worker") + pods_of(r, "router"):
        assert "TANDEM_MODEL_CACHE" not in env_of(pod.spec["containers"][0])
        assert not any(a.startswith("--model") for a in pod.spec["containers"][0]["args"])


# ---------------------------------------------------------------- monitoring


def test_servicemonitor_scrapes_the_router_with_a_key(releases: Releases) -> None:
    r = releases["monitoring"]
    (monitor,) = r.all("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    credentials = endpoint["authorization"]["credentials"]
    assert credentials == {"name": "demo-tandem-api-keys", "key": "api-keys"}
    router_service = r.one("Service", "router")
    assert selects(monitor["spec"]["selector"], router_service["metadata"]["labels"])
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Public metrics: no key sent, and the router is told so.
    r = releases["existing-secrets"]
    (monitor,) = r.all("ServiceMonitor")
    assert "authorization" not in monitor["spec"]["endpoints"][0]
    assert "--public-metrics" in the_container(r, "router")["args"]


def test_podmonitor_scrapes_every_worker_on_its_metrics_port(releases: Releases) -> None:
    r = releases["monitoring"]
    (monitor,) = r.all("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        "15s",
    )
    workers = pods_of(r, "worker")
    assert len(workers) == 2  # the prefill and the decode group
    for pod in workers:
        assert selects(monitor["spec"]["selector"], pod.labels)
        (container,) = pod.spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 9090 and "--metrics-port=9090" in container["args"]
        assert ports["stream"] == 50052 and "--stream-port=50052" in container["args"]
    assert not any(selects(monitor["spec"]["selector"], p.labels) for p in pods_of(r, "router"))
    assert releases["default"].all("PodMonitor") == []


def _served_metric_names() -> set[str]:
    """Every sample name the router's /metrics and a worker's own can carry."""
    from engine.output import StepTotals
    from services.router.metrics import RouterMetrics
    from services.worker.metrics import WorkerCollector
    from services.worker.stats import WorkerStats

    stats = WorkerStats(1, 2, 64, 40, 8, 24, 4, 1, 0, 10, 512, 2, 1, False, "", StepTotals())
    families = [
        *RouterMetrics("test-model").registry.collect(),
        *WorkerCollector(lambda: stats, ("test-model", "decode-0", "decode")).collect(),
    ]
    names = set()
    for family in families:
        names |= {sample.name for sample in family.samples}
        # Histograms' series appear in samples only once observed: name them all.
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.add(family.name)
    return names


def test_grafana_dashboard_charts_metrics_tandem_serves(releases: Releases) -> None:
    r = releases["monitoring"]
    (config_map,) = r.all("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (document,) = config_map["data"].values()
    dashboard = json.loads(document)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\b(tandem[_:][a-z_:]+)\b", e)}
    known = _served_metric_names()
    assert used and used <= known, used - known
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


# ---------------------------------------------------------------- test hook and notes


def test_helm_test_pod_is_a_hook_calling_the_router(release: Rendered) -> None:
    (pod,) = release.all("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    env = env_of(container)
    port = release.values.get("router", {}).get("service", {}).get("port", 8000)
    assert env["ROUTER_URL"]["value"] == f"http://{release.fullname}-router:{port}"
    assert "choices" in container["command"][2]


def test_notes_say_how_to_reach_the_api(releases: Releases) -> None:
    notes = releases["default"].notes
    assert "kubectl -n llm port-forward svc/demo-tandem-router 8000:8000" in notes
    assert "/v1/chat/completions" in notes and "Authorization: Bearer" in notes
    assert "get secret demo-tandem-api-keys" in notes
    assert "svc/demo-tandem-ray-dashboard 8265:8265" in notes
    assert "helm test demo" in notes
    assert "Authentication is off" in releases["open"].notes
    assert "get secret tandem-api-keys" in releases["existing-secrets"].notes
