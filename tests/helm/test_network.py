"""The NetworkPolicies admit every path the cluster uses and no other (netpol.py evaluates
them). Pods carry the labels they would carry in the cluster, KubeRay's included."""

from __future__ import annotations

import pytest

from tests.helm.conftest import Releases
from tests.helm.manifests import NAMESPACE, Rendered, pods_of
from tests.helm.netpol import Outside, Pod, allowed, in_namespace

WORKER_PORT, ROUTER_PORT, REDIS_PORT, METRICS_PORT = 50051, 8000, 6379, 9090
STREAM_PORT = 50052  # a worker's token stream
# Ray ports: GCS, client, dashboard, dashboard agent, a raylet's, a worker's.
RAY_PORTS = (6379, 10001, 8265, 52365, 37251, 10042)

INTERNET = Outside("203.0.113.7")
API_SERVER = Outside("172.18.0.2")
KUBE_DNS = Pod({"k8s-app": "kube-dns"}, "kube-system", "10.96.0.10")


def _pod(r: Rendered, component: str, index: int = 0, ip: str = "10.244.0.1") -> Pod:
    return Pod(pods_of(r, component)[index].labels, NAMESPACE, ip)


class Cluster:
    """A release's pods and policies, and the question: may `a` reach `b` on a port?"""

    def __init__(self, r: Rendered) -> None:
        self.policies = in_namespace(r.all("NetworkPolicy"), NAMESPACE)
        self.router = _pod(r, "router", ip="10.244.0.2")
        self.prefill = _pod(r, "worker", 0, ip="10.244.1.2")
        self.decode = _pod(r, "worker", 1, ip="10.244.1.3")
        self.head = _pod(r, "ray-head", ip="10.244.2.2")
        self.redis = _pod(r, "redis", ip="10.244.3.2") if pods_of(r, "redis") else None
        self.autoscaler = (
            _pod(r, "autoscaler", ip="10.244.4.2") if pods_of(r, "autoscaler") else None
        )
        self.test = _pod(r, "test", ip="10.244.5.2")
        # Someone else's pods: the same namespace, and another release of the chart.
        self.stranger = Pod({"app": "notebook"}, NAMESPACE, "10.244.6.2")
        other = {**self.decode.labels, "app.kubernetes.io/instance": "other"}
        self.other_release_worker = Pod(other, NAMESPACE, "10.244.6.3")

    def can(
        self, a: Pod | Outside | None, b: Pod | Outside | None, port: int, protocol: str = "TCP"
    ) -> bool:
        """Whether `a` may open a connection to `b` (both must exist in this release)."""
        assert a is not None and b is not None
        return allowed(self.policies, a, b, port, protocol)


@pytest.fixture(scope="module")
def default(releases: Releases) -> Cluster:
    return Cluster(releases["default"])


def test_every_path_the_cluster_uses_is_open(default: Cluster) -> None:
    c = default
    assert c.can(INTERNET, c.router, ROUTER_PORT)
    assert c.can(c.stranger, c.router, ROUTER_PORT)
    assert c.can(c.test, c.router, ROUTER_PORT)
    for worker in (c.prefill, c.decode):
        assert c.can(c.router, worker, WORKER_PORT) and c.can(c.router, worker, STREAM_PORT)
        assert c.can(INTERNET, worker, METRICS_PORT)  # a scraper anywhere, by default
        for client in (c.router, worker, c.autoscaler):
            assert c.can(client, c.redis, REDIS_PORT)
        for port in RAY_PORTS:
            assert c.can(worker, c.head, port) and c.can(c.head, worker, port)
    # KV blocks between workers: NIXL over UCX, on any port, both ways.
    for port in (WORKER_PORT, 13337, 40001):
        assert c.can(c.decode, c.prefill, port) and c.can(c.prefill, c.decode, port)
    assert c.autoscaler is not None
    assert c.can(c.autoscaler, API_SERVER, 443) and c.can(c.autoscaler, API_SERVER, 6443)
    for pod in (c.router, c.prefill, c.head, c.autoscaler, c.test):
        assert c.can(pod, KUBE_DNS, 53, "UDP") and c.can(pod, KUBE_DNS, 53, "TCP")


def test_nothing_else_is_open(default: Cluster) -> None:
    c = default
    # Clients reach the router's HTTP port and nothing else.
    for outsider in (INTERNET, c.stranger, c.other_release_worker):
        assert not c.can(outsider, c.prefill, WORKER_PORT)
        assert not c.can(outsider, c.decode, WORKER_PORT)
        assert not c.can(outsider, c.decode, STREAM_PORT)
        assert not c.can(outsider, c.redis, REDIS_PORT)
        assert not c.can(outsider, c.head, 6379) and not c.can(outsider, c.head, 8265)
        assert not c.can(outsider, c.router, 9090)
    # Only the router calls workers' gRPC; the autoscaler and the test pod reach no worker.
    assert c.autoscaler is not None
    assert not c.can(c.autoscaler, c.decode, WORKER_PORT)
    assert not c.can(c.autoscaler, c.decode, STREAM_PORT)
    assert not c.can(c.test, c.decode, WORKER_PORT)
    assert not c.can(c.test, c.redis, REDIS_PORT)
    # The router does not reach the Ray head, nor other ports of the workers.
    assert not c.can(c.router, c.head, 6379)
    assert not c.can(c.router, c.decode, 13337)
    # Redis calls no one; nobody but the autoscaler talks to the API server; no pod of the
    # release reaches the internet.
    assert not c.can(c.redis, c.router, ROUTER_PORT)
    assert not c.can(c.redis, KUBE_DNS, 53, "UDP")
    for pod in (c.router, c.prefill, c.decode, c.head, c.test):
        assert not c.can(pod, API_SERVER, 443)
        assert not c.can(pod, INTERNET, 443)
    assert not c.can(c.autoscaler, INTERNET, 80)
    # Nothing calls the autoscaler or the test pod.
    assert not c.can(c.router, c.autoscaler, 8080)
    assert not c.can(c.decode, c.test, 8080)
    # Another release's workers are strangers to this one's.
    assert not c.can(c.other_release_worker, c.prefill, 13337)
    assert not c.can(c.prefill, c.other_release_worker, 13337)


def test_router_ingress_can_be_narrowed(releases: Releases) -> None:
    c = Cluster(releases["ingress"])
    nginx = Pod({"app": "ingress-nginx"}, "ingress-nginx", "10.244.7.2")
    assert c.can(nginx, c.router, ROUTER_PORT)
    assert c.can(c.test, c.router, ROUTER_PORT)  # `helm test` still gets through
    assert not c.can(INTERNET, c.router, ROUTER_PORT)
    assert not c.can(c.stranger, c.router, ROUTER_PORT)
    assert not c.can(nginx, c.decode, WORKER_PORT)


def test_worker_metrics_can_be_narrowed_to_the_scraper(releases: Releases) -> None:
    c = Cluster(releases["monitoring"])
    prometheus = Pod({"app": "prometheus"}, "monitoring", "10.244.7.3")
    assert c.can(prometheus, c.decode, METRICS_PORT) and c.can(prometheus, c.prefill, METRICS_PORT)
    assert not c.can(INTERNET, c.decode, METRICS_PORT)
    assert not c.can(c.stranger, c.decode, METRICS_PORT)
    assert not c.can(prometheus, c.decode, WORKER_PORT)  # its metrics port, nothing else


def test_external_redis_is_reached_at_its_address_and_port(releases: Releases) -> None:
    c = Cluster(releases["external-redis"])
    managed = Outside("10.20.3.4")
    assert c.redis is None
    for client in (c.router, c.prefill, c.autoscaler):
        assert client is not None and c.can(client, managed, 6380)
        assert not c.can(client, managed, 6379)
        assert not c.can(client, Outside("10.30.0.1"), 6380)
    assert not c.can(c.head, managed, 6380)


def test_model_download_reaches_only_https(releases: Releases) -> None:
    r = releases["large"]
    c = Cluster(r)
    job = Pod(pods_of(r, "model-download")[0].labels, NAMESPACE, "10.244.8.2")
    assert c.can(job, INTERNET, 443)
    assert not c.can(job, INTERNET, 80)
    assert not c.can(job, c.redis, REDIS_PORT)
    assert not c.can(INTERNET, job, 443)
    # The workers still reach each other over the RDMA network's pod-network fallback.
    assert c.can(c.prefill, c.decode, 40001)


def test_dashboard_is_closed_unless_opened(releases: Releases, default: Cluster) -> None:
    assert not default.can(default.stranger, default.head, 8265)
    assert releases["open"].all("NetworkPolicy") == []


def test_every_pod_of_the_release_is_isolated_both_ways(release: Rendered) -> None:
    policies = release.all("NetworkPolicy")
    if not release.values.get("networkPolicy", {}).get("enabled", True):
        assert policies == []
        return
    from tests.helm.manifests import pod_sources, selects

    for pod in pod_sources(release):
        mine = [p for p in policies if selects(p["spec"]["podSelector"], pod.labels)]
        types = {t for p in mine for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, pod.owner
