"""The KubeRay actuator (services/autoscaler/kuberay_actuator.py) through the real
`kubernetes` client against a local server speaking the Kubernetes API for rayclusters
(tests/helpers/fake_kube_api.py): what it reads, what it patches, and how it takes a 409
(a change made meanwhile) and a 403 (RBAC)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.autoscaler.kuberay_actuator import KubeRayActuator
from services.autoscaler.loop import Autoscaler, AutoscalerConfig
from services.autoscaler.sizing import Bounds
from services.cluster.cluster_token import TOKEN_ENV
from services.cluster.redis_url import REDIS_URL_ENV
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord
from tests.helpers.fake_kube_api import FakeKube, serve

NS, NAME = "serving", "tandem"
RAYCLUSTER: dict[str, Any] = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": NAME, "namespace": NS},
    "spec": {
        "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": []}}},
        "workerGroupSpecs": [
            {"groupName": "prefill", "replicas": 1, "minReplicas": 0, "maxReplicas": 8},
            {"groupName": "decode", "replicas": 3, "minReplicas": 1, "maxReplicas": 8},
            {"groupName": "batch", "replicas": 2, "minReplicas": 0, "maxReplicas": 4},
        ],
    },
}
RECORDS = [  # worker ids are pod names
    WorkerRecord(worker_id="tandem-decode-aaaaa", role="decode", running=6),
    WorkerRecord(worker_id="tandem-decode-bbbbb", role="decode", running=1),
    WorkerRecord(worker_id="tandem-decode-ccccc", role="decode", running=2),
    WorkerRecord(worker_id="tandem-prefill-ddddd", role="prefill"),
]


@pytest.fixture
def kube() -> Iterator[tuple[FakeKube, KubeRayActuator]]:
    fake = FakeKube(NS, RAYCLUSTER)
    with serve(fake) as url:
        config = client.Configuration()
        config.host = url
        api = client.CustomObjectsApi(client.ApiClient(config))
        groups = {"prefill": "prefill", "decode": "decode"}
        yield fake, KubeRayActuator(api, NS, NAME, groups, lambda: list(RECORDS))


def test_replicas_are_read_from_the_worker_groups(kube: tuple[FakeKube, KubeRayActuator]) -> None:
    fake, act = kube
    assert act.replicas() == {"prefill": 1, "decode": 3}
    fake.group("decode")["replicas"] = 5  # kubectl edit: the new current size
    assert act.replicas() == {"prefill": 1, "decode": 5}


def test_scaling_up_patches_the_group_with_its_resource_version(
    kube: tuple[FakeKube, KubeRayActuator],
) -> None:
    fake, act = kube
    act.scale("prefill", 3)
    (patch,) = fake.patches
    assert patch["metadata"] == {"resourceVersion": "1"}
    assert fake.group("prefill")["replicas"] == 3
    assert fake.group("batch") == RAYCLUSTER["spec"]["workerGroupSpecs"][2]  # not ours: kept
    assert fake.obj["metadata"]["resourceVersion"] == "2"


def test_scaling_down_names_the_least_busy_pods(kube: tuple[FakeKube, KubeRayActuator]) -> None:
    fake, act = kube
    act.scale("decode", 1)
    group = fake.group("decode")
    assert group["replicas"] == 1
    deleted = group["scaleStrategy"]["workersToDelete"]
    assert deleted == ["tandem-decode-bbbbb", "tandem-decode-ccccc"]


def test_a_conflict_is_read_again_and_retried(
    kube: tuple[FakeKube, KubeRayActuator], caplog: pytest.LogCaptureFixture
) -> None:
    fake, act = kube
    fake.conflicts = 1  # someone else writes between our GET and our PATCH, once
    with caplog.at_level(logging.INFO):
        act.scale("decode", 4)
    assert [p["metadata"]["resourceVersion"] for p in fake.patches] == ["1", "2"]
    assert fake.group("decode")["replicas"] == 4 and "409" in caplog.text
    fake.conflicts = 10  # always beaten: gives up after a few tries
    with pytest.raises(ApiException) as e:
        act.scale("decode", 5)
    assert e.value.status == 409 and fake.group("decode")["replicas"] == 4


def test_a_refusal_is_said_and_changes_nothing(
    kube: tuple[FakeKube, KubeRayActuator], caplog: pytest.LogCaptureFixture
) -> None:
    fake, act = kube
    fake.forbid_patch = True
    with pytest.raises(ApiException) as e, caplog.at_level(logging.ERROR):
        act.scale("decode", 5)
    assert e.value.status == 403 and "grant get and patch on rayclusters.ray.io" in caplog.text
    assert fake.group("decode")["replicas"] == 3


def test_the_loop_brings_a_hand_set_size_into_bounds_and_holds_on_a_refusal(
    kube: tuple[FakeKube, KubeRayActuator],
) -> None:
    fake, act = kube
    now = [0.0]
    config = AutoscalerConfig(bounds={"prefill": Bounds(0, 4), "decode": Bounds(1, 2)})
    scaler = Autoscaler(config, lambda: list(RECORDS), act, clock=lambda: now[0])
    decode = next(d for d in scaler.tick() if d.pool == "decode")
    # 3 set by hand is above the bounds' max: brought back to 2, the least busy pod named
    assert (decode.current, decode.desired, decode.direction) == (3, 2, "bounds")
    assert fake.group("decode")["scaleStrategy"]["workersToDelete"] == ["tandem-decode-bbbbb"]
    fake.forbid_patch = True
    fake.group("decode")["replicas"] = 4
    now[0] = 5.0
    decode = next(d for d in scaler.tick() if d.pool == "decode")  # refused: a hold, said
    assert (decode.current, decode.desired) == (4, 4)
    assert decode.reason == "hold: scaling to 2 failed (ForbiddenException)"
    assert fake.group("decode")["replicas"] == 4
    fake.forbid_patch = False
    now[0] = 10.0
    decode = next(d for d in scaler.tick() if d.pool == "decode")  # allowed again: done
    assert (decode.current, decode.desired) == (4, 2) and fake.group("decode")["replicas"] == 2


def test_tandem_autoscale_kuberay_patches_the_cluster(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command as an operator runs it beside a KubeRay cluster: kubeconfig pointing at
    the API server, the cluster's Redis and token in its environment."""
    fake = FakeKube(NS, RAYCLUSTER)
    registry = Registry(redis.Redis.from_url(redis_url), prefix="tandem", token=TOKEN)
    ids = ("tandem-prefill-dd", "tandem-decode-aa", "tandem-decode-bb", "tandem-decode-cc")
    for wid in ids:
        role = wid.split("-")[1]
        registry.heartbeat(WorkerRecord(worker_id=wid, role=role, num_blocks=64, max_num_seqs=8))
    try:
        with serve(fake) as url:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(KUBECONFIG.format(url=url))
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                REDIS_URL_ENV: redis_url,
                TOKEN_ENV: TOKEN,
            }
            cmd = [
                sys.executable, "-m", "services.cli", "autoscale", f"--kuberay={NS}/{NAME}",
                "--ticks=8", "--autoscale-interval-s=0.2", "--stable-window-s=0.5",
                "--panic-window-s=0.2", "--down-cooldown-s=0",
            ]  # fmt: skip
            got = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        # idle: a stable window later each pool goes to its floor, the group patched
        assert fake.group("prefill")["replicas"] == 0
        assert fake.group("decode")["replicas"] == 1
        deleted = fake.group("decode")["scaleStrategy"]["workersToDelete"]
        assert len(deleted) == 2 and set(deleted) < set(ids)
        assert fake.group("batch")["replicas"] == 2
        assert "decode  3 -> 1 (ready 3): down: no load" in got.stdout
    finally:
        for wid in ids:
            registry.remove(wid)


TOKEN = "kuberay-cli-token"
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: me, user: {{token: not-checked}}}}]
contexts: [{{name: here, context: {{cluster: fake, user: me, namespace: serving}}}}]
current-context: here
"""
