"""Rendering the chart offline (Helm's own Go SDK, through helm-python) and reading what it
renders: objects by kind and name, and the pods they make, with the labels those pods
would carry in a cluster (KubeRay adds its own to the RayCluster's).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "tandem"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "demo"
NAMESPACE = "llm"

# Every value set the suite renders, by name: the chart's defaults, its two example files,
# and tests/helm/values/*.yaml.
VALUE_FILES: dict[str, Path | None] = {
    "default": None,
    "cpu-kind": CHART_DIR / "values-cpu-kind.yaml",
    "large": CHART_DIR / "values-large.yaml",
    **{p.stem: p for p in sorted(VALUES_DIR.glob("*.yaml"))},
}

Obj = dict[str, Any]


def load_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path}: not a mapping"
    return loaded


def render(
    chart: helm_python.Chart,
    values: dict[str, Any],
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render as `helm install` would (no cluster: `lookup` finds nothing)."""
    files = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects = [
        doc
        for path, text in sorted(files.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    notes = next((text for path, text in files.items() if path.endswith("NOTES.txt")), "")
    return Rendered(files=files, objects=objects, notes=notes, release=release)


@dataclass
class Rendered:
    files: dict[str, str]
    objects: list[Obj]
    notes: str
    release: str
    values: dict[str, Any] = field(default_factory=dict)

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> Obj:
        """The object of this kind named <fullname>-<name> (or <fullname> for name "")."""
        full = self.fullname if not name else f"{self.fullname}-{name}"
        found = [o for o in self.all(kind) if o["metadata"]["name"] == full]
        assert len(found) == 1, f"{kind}/{full}: found {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    @property
    def fullname(self) -> str:
        return f"{self.release}-tandem"

    def raycluster(self) -> Obj:
        (cluster,) = self.all("RayCluster")
        return cluster

    def manifest_text(self, skip_kind: str) -> str:
        """Every rendered manifest but those of `skip_kind`, as one text (NOTES included)."""
        docs = [o for o in self.objects if o["kind"] != skip_kind]
        return yaml.safe_dump_all(docs) + self.notes


@dataclass(frozen=True)
class PodSource:
    """A pod template in the render, with the labels its pods get in the cluster."""

    owner: str  # e.g. "Deployment/demo-tandem-router", "RayCluster/demo-tandem:decode"
    component: str
    labels: Mapping[str, str]
    spec: Obj


# Labels KubeRay's operator puts on every pod it makes (ray-operator/controllers/ray/common/
# pod.go, labelPod); a template's own labels override them, except ray.io/cluster,
# ray.io/node-type and ray.io/group, which KubeRay always sets.
def _kuberay_labels(
    template_labels: Mapping[str, str], cluster: str, node_type: str, group: str
) -> dict[str, str]:
    labels = {
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    labels.update(template_labels)
    labels.update({"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group})
    return labels


def pod_sources(r: Rendered) -> list[PodSource]:
    out: list[PodSource] = []
    for o in r.objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("Deployment", "Job"):
            t = o["spec"]["template"]
            labels = t["metadata"]["labels"]
            out.append(PodSource(f"{kind}/{name}", labels[COMPONENT], labels, t["spec"]))
        elif kind == "Pod":
            labels = o["metadata"]["labels"]
            out.append(PodSource(f"Pod/{name}", labels[COMPONENT], labels, o["spec"]))
        elif kind == "RayCluster":
            head = o["spec"]["headGroupSpec"]["template"]
            labels = _kuberay_labels(head["metadata"]["labels"], name, "head", "headgroup")
            out.append(
                PodSource(f"RayCluster/{name}:head", labels[COMPONENT], labels, head["spec"])
            )
            for g in o["spec"]["workerGroupSpecs"]:
                t = g["template"]
                labels = _kuberay_labels(t["metadata"]["labels"], name, "worker", g["groupName"])
                owner = f"RayCluster/{name}:{g['groupName']}"
                out.append(PodSource(owner, labels[COMPONENT], labels, t["spec"]))
    return out


COMPONENT = "app.kubernetes.io/component"


def pods_of(r: Rendered, component: str) -> list[PodSource]:
    return [p for p in pod_sources(r) if p.component == component]


def containers(spec: Obj) -> Iterator[Obj]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def worker_groups(r: Rendered) -> dict[str, Obj]:
    """The RayCluster's worker groups by role (the tandem/role label of their pods)."""
    groups = r.raycluster()["spec"]["workerGroupSpecs"]
    return {g["template"]["metadata"]["labels"]["tandem/role"]: g for g in groups}


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels, matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def kube_expand(text: str, env: Mapping[str, str]) -> str:
    """What Kubernetes makes of $(VAR) in a container's args and env values: the variable's
    value when it is defined, else the text unchanged; $$ is a literal $."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


@functools.cache
def _tandem_parser() -> Any:
    from services.cli import build_parser

    return build_parser()


def parse_tandem(argv: list[str]) -> Any:
    """The `tandem` CLI's own parser: a flag the chart passes that the CLI lacks fails here."""
    try:
        return _tandem_parser().parse_args(argv)
    except SystemExit as e:  # argparse's way of refusing
        raise AssertionError(f"tandem refuses {argv}") from e


def the_container(r: Rendered, component: str, owner_suffix: str = "") -> Obj:
    (pod,) = [p for p in pods_of(r, component) if p.owner.endswith(owner_suffix)]
    (container,) = pod.spec["containers"]
    return container
