"""Secrets appear only as references, and every pod is locked down."""

from __future__ import annotations

import base64
import urllib.parse

from tests.helm.conftest import Releases
from tests.helm.manifests import (
    Rendered,
    containers,
    env_of,
    kube_expand,
    pod_sources,
    pods_of,
    the_container,
)

# ---------------------------------------------------------------- secrets


SECRET_ENV = {
    "TANDEM_API_KEY",
    "TANDEM_CLUSTER_TOKEN",
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
    "HF_TOKEN",
}


def test_secrets_appear_only_as_references(release: Rendered) -> None:
    generated = [
        base64.b64decode(value).decode()
        for secret in release.all("Secret")
        for value in secret.get("data", {}).values()
    ]
    assert all(len(v) >= 32 for v in generated)
    text = release.manifest_text(skip_kind="Secret")
    for value in generated:
        assert value not in text
        assert base64.b64encode(value.encode()).decode() not in text
    for pod in pod_sources(release):
        for container in containers(pod.spec):
            for name, entry in env_of(container).items():
                if name in SECRET_ENV:
                    assert "value" not in entry, (pod.owner, name)
                    assert entry["valueFrom"]["secretKeyRef"]["name"], (pod.owner, name)
            assert "envFrom" not in container


def test_redis_url_expands_to_the_password_from_the_secret(releases: Releases) -> None:
    for name, scheme, host, port, db in [
        ("default", "redis", "demo-tandem-redis.llm.svc", 6379, "0"),
        ("external-redis", "rediss", "redis.example.internal", 6380, "2"),
    ]:
        container = the_container(releases[name], "router")
        env_list = container["env"]
        names = [e["name"] for e in env_list]
        # Kubernetes expands $(REDIS_PASSWORD) only from variables defined before.
        assert names.index("REDIS_PASSWORD") < names.index("TANDEM_REDIS_URL")
        url = env_of(container)["TANDEM_REDIS_URL"]["value"]
        expanded = urllib.parse.urlsplit(kube_expand(url, {"REDIS_PASSWORD": "pw"}))
        assert (expanded.scheme, expanded.hostname, expanded.port) == (scheme, host, port)
        assert expanded.password == "pw" and expanded.path == f"/{db}"
    # With an external Redis the chart runs none of its own.
    assert not pods_of(releases["external-redis"], "redis")


# ---------------------------------------------------------------- pod security


def test_pods_are_locked_down(release: Rendered) -> None:
    for pod in pod_sources(release):
        sc = pod.spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, pod.owner
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, pod.owner
        mounts_of_tmp = {v["name"] for v in pod.spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(pod.spec):
            csc = container["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, pod.owner
            assert csc["capabilities"]["drop"] == ["ALL"], pod.owner
            assert set(csc["capabilities"].get("add", [])) <= {"IPC_LOCK"}, pod.owner
            assert csc["readOnlyRootFilesystem"] is True, pod.owner
            # Where the root filesystem is read-only, /tmp is a volume of the pod's own.
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in mounts_of_tmp, (pod.owner, container["name"])
            assert "resources" in container, (pod.owner, container["name"])
