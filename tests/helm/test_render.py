"""The chart renders, lints clean in strict mode, and every object it renders is valid:
built-in kinds against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: an
unknown field is an error), custom resources against their operators' CRDs, the RayCluster
also against KubeRay's own rules."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.helm.conftest import Releases
from tests.helm.crds import crd, crd_errors, is_custom, kuberay_rule_errors
from tests.helm.manifests import CHART_DIR, NAMESPACE, VALUE_FILES, Rendered, load_values, render

TARGET_KUBE = "1.31.0"
# The oldest release Chart.yaml's kubeVersion admits, and the newest kubernetes-validate knows.
OLDEST_KUBE = "1.28.0"
NEWEST_KUBE = kubernetes_validate.utils.latest_version()

EXPECTED_KINDS = {
    "ConfigMap",
    "Deployment",
    "HTTPRoute",
    "Ingress",
    "Job",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Pod",
    "PodDisruptionBudget",
    "PodMonitor",
    "RayCluster",
    "Role",
    "RoleBinding",
    "Secret",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
}


def _kube_errors(obj: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return f"{obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}"
    return None


def _validate_builtins(r: Rendered, version: str) -> list[str]:
    errors = []
    for obj in r.objects:
        if not is_custom(obj):
            error = _kube_errors(obj, version)
            if error:
                errors.append(error)
    return errors


def test_lint_is_clean_in_strict_mode(release: Rendered) -> None:
    report = helm_python.lint(
        CHART_DIR, release.values, strict=True, namespace=NAMESPACE, kube_version="v1.31.0"
    )
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended": there is no project icon yet).
    worse = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse == []


def test_values_meet_the_schema(chart: helm_python.Chart, release: Rendered) -> None:
    chart.validate_schema(release.values)


def test_only_known_kinds(release: Rendered) -> None:
    kinds = {o["kind"] for o in release.objects}
    assert kinds <= EXPECTED_KINDS, kinds - EXPECTED_KINDS
    assert {"RayCluster", "Deployment", "Service", "Pod"} <= kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in release.objects]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_builtin_objects_are_valid_kubernetes(release: Rendered) -> None:
    assert _validate_builtins(release, TARGET_KUBE) == []


@pytest.mark.parametrize("version", [OLDEST_KUBE, NEWEST_KUBE])
@pytest.mark.parametrize("name", ["default", "large", "ingress"])
def test_builtin_objects_are_valid_on_every_supported_kubernetes(
    releases: Releases, name: str, version: str
) -> None:
    assert _validate_builtins(releases[name], version) == []


def test_raycluster_pod_templates_are_valid_kubernetes(release: Rendered) -> None:
    """The CRD embeds a pod template schema of its own age; Kubernetes' is checked too."""
    spec = release.raycluster()["spec"]
    templates = [spec["headGroupSpec"]["template"]]
    templates += [g["template"] for g in spec["workerGroupSpecs"]]
    for i, template in enumerate(templates):
        as_object = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"group-{i}"},
            "template": template,
        }
        assert _kube_errors(as_object, TARGET_KUBE) is None


def test_custom_resources_match_their_crds(release: Rendered) -> None:
    custom = [o for o in release.objects if is_custom(o)]
    assert any(o["kind"] == "RayCluster" for o in custom)
    for obj in custom:
        assert crd_errors(obj) == [], obj["kind"]


def test_raycluster_keeps_kuberay_rules(release: Rendered) -> None:
    assert kuberay_rule_errors(release.raycluster()) == []


def test_crd_copies_are_the_documented_releases() -> None:
    """The README beside each CRD names the release it came from."""
    cases = {
        ("ray.io/v1", "RayCluster"): ("kuberay", None),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"): (
            "gateway-api",
            "gateway.networking.k8s.io/bundle-version",
        ),
        ("monitoring.coreos.com/v1", "ServiceMonitor"): (
            "prometheus-operator",
            "operator.prometheus.io/version",
        ),
        ("monitoring.coreos.com/v1", "PodMonitor"): (
            "prometheus-operator",
            "operator.prometheus.io/version",
        ),
    }
    here = CHART_DIR.parents[1] / "tests" / "helm"
    for (api_version, kind), (folder, annotation) in cases.items():
        readme = (here / folder / "README.md").read_text()
        assert (here / folder / "LICENSE").read_text().lstrip().startswith("Apache License")
        if annotation:
            version = crd(api_version, kind)["metadata"]["annotations"][annotation]
            assert version.lstrip("v") in readme


def test_a_longest_release_name_fits_every_limit(chart: helm_python.Chart) -> None:
    """Helm allows 53 characters; derived names must still fit Kubernetes' and KubeRay's."""
    name = "r" + "x" * 52
    rendered = render(chart, load_values(VALUE_FILES["large"]), release=name)
    dns1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(names) == len(set(names)), "truncated names collide"
    for obj in rendered.objects:
        obj_name = obj["metadata"]["name"]
        assert len(obj_name) <= 63, obj_name
        if obj["kind"] == "Service":
            assert dns1035.match(obj_name), obj_name
    assert kuberay_rule_errors(rendered.raycluster()) == []
    assert _validate_builtins(rendered, TARGET_KUBE) == []
