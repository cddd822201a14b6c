"""The router and the autoscaler as rendered: command lines the `tandem` CLI accepts,
probes and drain, selectors that select their pods and nothing else, and an autoscaler Role
that is exactly what its actuator needs."""

from __future__ import annotations

from tests.helm.conftest import Releases
from tests.helm.manifests import (
    NAMESPACE,
    Rendered,
    env_of,
    parse_tandem,
    pod_sources,
    pods_of,
    selects,
    the_container,
    worker_groups,
)

# ---------------------------------------------------------------- the router


def test_router_command_probes_and_drain(release: Rendered) -> None:
    container = the_container(release, "router")
    args = parse_tandem(["router", *container["args"]])
    router = release.values.get("router", {})
    assert (args.host, args.mode) == ("0.0.0.0", "disagg")
    assert args.port == router.get("port", 8000)
    assert args.public_metrics is router.get("metrics", {}).get("public", False)
    assert args.drain_delay_s == router.get("drainDelaySeconds", 5)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    (pod,) = pods_of(release, "router")
    grace = pod.spec["terminationGracePeriodSeconds"]
    assert grace >= args.drain_delay_s + args.drain_timeout_s + 5
    # The router keeps serving through its drain delay itself: no preStop sleep.
    assert "lifecycle" not in container


def test_router_without_workers_needs_a_context_length(releases: Releases) -> None:
    args = parse_tandem(["router", *the_container(releases["model-on-claim"], "router")["args"]])
    assert args.max_model_len == 8192
    assert args.hold_for_worker_s == 120  # the decode pool may be empty: hold, do not 503
    args = parse_tandem(["router", *the_container(releases["default"], "router")["args"]])
    assert args.max_model_len is None and args.hold_for_worker_s is None


def test_api_keys_come_from_a_secret(releases: Releases) -> None:
    env = env_of(the_container(releases["default"], "router"))
    ref = env["TANDEM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "demo-tandem-api-keys", "key": "api-keys"}
    env = env_of(the_container(releases["existing-secrets"], "router"))
    ref = env["TANDEM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tandem-api-keys", "key": "keys"}
    assert "TANDEM_API_KEY" not in env_of(the_container(releases["open"], "router"))


def test_services_and_budgets_select_exactly_their_pods(release: Rendered) -> None:
    pods = pod_sources(release)
    expected = {
        f"{release.fullname}-router": {"router"},
        f"{release.fullname}-redis": {"redis"},
        f"{release.fullname}-ray-dashboard": {"ray-head"},
    }
    for service in release.all("Service"):
        name = service["metadata"]["name"]
        chosen = {
            p.owner for p in pods if selects({"matchLabels": service["spec"]["selector"]}, p.labels)
        }
        wanted = {p.owner for p in pods if p.component in expected[name]}
        assert chosen == wanted and chosen, name
    for pdb in release.all("PodDisruptionBudget"):
        name = pdb["metadata"]["name"]
        chosen = {p.owner for p in pods if selects(pdb["spec"]["selector"], p.labels)}
        if name.endswith("-router"):
            assert chosen == {f"Deployment/{release.fullname}-router"}
        else:
            role = name.removeprefix(f"{release.fullname}-").removesuffix("-workers")
            group = worker_groups(release)[role]["groupName"]
            assert chosen == {f"RayCluster/{release.fullname}:{group}"}, name


def test_every_pod_template_label_matches_its_deployment_selector(release: Rendered) -> None:
    for deployment in release.all("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"], labels)


def test_ingress_and_httproute_lead_to_the_router(releases: Releases) -> None:
    r = releases["ingress"]
    (ingress,) = r.all("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-tandem-router", "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (route,) = r.all("HTTPRoute")
    (ref,) = route["spec"]["rules"][0]["backendRefs"]
    assert (ref["name"], ref["port"]) == ("demo-tandem-router", 8000)
    assert route["spec"]["parentRefs"][0]["name"] == "public-gateway"
    assert not releases["default"].has("Ingress") and not releases["default"].has("HTTPRoute")


# ---------------------------------------------------------------- the autoscaler


def test_autoscaler_role_is_exactly_get_and_patch_on_this_raycluster(release: Rendered) -> None:
    if not release.values.get("autoscaler", {}).get("enabled", True):
        assert not release.has("Role") and not release.has("RoleBinding")
        return
    cluster = release.raycluster()["metadata"]["name"]
    (role,) = release.all("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayclusters"],
            "resourceNames": [cluster],
            "verbs": ["get", "patch"],
        }
    ]
    assert not release.all("ClusterRole") and not release.all("ClusterRoleBinding")
    (binding,) = release.all("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (pod,) = pods_of(release, "autoscaler")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod.spec["serviceAccountName"], "namespace": NAMESPACE}
    ]
    # The only pod with an API token is the autoscaler's.
    for other in pod_sources(release):
        if other.component != "autoscaler":
            assert other.spec["automountServiceAccountToken"] is False, other.owner


def test_autoscaler_acts_on_this_releases_groups(release: Rendered) -> None:
    if not release.has("Role"):
        return
    container = the_container(release, "autoscaler")
    args = parse_tandem(["autoscale", *container["args"]])
    cluster = release.raycluster()
    assert args.kuberay == f"{NAMESPACE}/{cluster['metadata']['name']}"
    groups = worker_groups(release)
    for role in ("prefill", "decode"):
        g = groups[role]
        assert getattr(args, f"{role}_group") == g["groupName"]
        assert getattr(args, f"{role}_replicas") == f"{g['minReplicas']}:{g['maxReplicas']}"
    assert container["command"] == ["tandem", "autoscale"]
    (deployment,) = [
        d for d in release.all("Deployment") if d["metadata"]["name"].endswith("-autoscaler")
    ]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
