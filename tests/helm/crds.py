"""Custom resources checked against the CRDs of the operators that read them, and KubeRay's
own rules beyond its CRD's schema.

The CRD files are copies of the operators' releases (see the README.md beside each). An
API server prunes the fields a structural schema does not name, silently: a misspelled
field in the chart would simply vanish. `strict` makes them errors here instead. What the
CRDs state in CEL (x-kubernetes-validations) is not evaluated.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
CRD_FILES: dict[tuple[str, str], Path] = {
    ("ray.io/v1", "RayCluster"): HERE / "kuberay" / "ray.io_rayclusters.yaml",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): (
        HERE / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        HERE / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml"
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        HERE / "prometheus-operator" / "monitoring.coreos.com_podmonitors.yaml"
    ),
}
# libyaml's loader where PyYAML has it: the RayCluster CRD is close to 1 MB of YAML.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CRD_FILES


def strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a JSON schema that refuses unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd(api_version: str, kind: str) -> dict[str, Any]:
    loaded = yaml.load(CRD_FILES[(api_version, kind)].read_text(), Loader=_LOADER)
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    definition = crd(api_version, kind)
    assert definition["spec"]["group"] == group
    assert definition["spec"]["names"]["kind"] == kind
    (served,) = [v for v in definition["spec"]["versions"] if v["name"] == version]
    schema = strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """What the CRD's schema finds wrong in `obj`, one line each ([] when valid)."""
    validator = _validator(obj["apiVersion"], obj["kind"])
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    )


# KubeRay's checks of a RayCluster that its CRD cannot state (ray-operator/controllers/ray/
# utils/validation.go: ValidateRayClusterMetadata, ValidateRayClusterSpec), for what the
# chart sets.
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYCLUSTER_NAME = 53


def kuberay_rule_errors(cluster: dict[str, Any]) -> list[str]:
    errors = []
    name = cluster["metadata"]["name"]
    if len(name) > MAX_RAYCLUSTER_NAME:
        errors.append(f"name {name!r} is longer than {MAX_RAYCLUSTER_NAME} characters")
    if not _DNS1035.match(name):
        errors.append(f"name {name!r} is not a DNS-1035 label")
    spec = cluster["spec"]
    if not spec["headGroupSpec"]["template"]["spec"].get("containers"):
        errors.append("the head group has no container")
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        errors.append(f"worker group names are not unique: {names}")
    for g in spec.get("workerGroupSpecs", []):
        where = f"worker group {g['groupName']!r}"
        if not (len(g["groupName"]) <= 63 and _DNS1123.match(g["groupName"])):
            errors.append(f"{where}: its name is not a DNS-1123 label")
        if not g["template"]["spec"].get("containers"):
            errors.append(f"{where} has no container")
        if not spec.get("enableInTreeAutoscaling") and (
            "minReplicas" not in g or "maxReplicas" not in g
        ):
            errors.append(f"{where} must set minReplicas and maxReplicas (autoscaling is off)")
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
        if min(lo, n, hi) < 0:
            errors.append(f"{where} has a negative replica count: {lo}, {n}, {hi}")
        if not lo <= n <= hi:
            errors.append(f"{where}: minReplicas {lo} <= replicas {n} <= maxReplicas {hi} fails")
        if "labels" in g.get("rayStartParams", {}):
            errors.append(f"{where}: rayStartParams['labels'] is not supported")
    return errors
