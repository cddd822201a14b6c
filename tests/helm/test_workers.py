"""The worker groups as rendered: GPUs, sizes and RDMA reach them, their command starts Ray
and then the worker with flags the `tandem` CLI accepts, probes and /dev/shm are right."""

from __future__ import annotations

import helm_python
import pytest

from tests.helm.conftest import Releases
from tests.helm.manifests import (
    Rendered,
    env_of,
    parse_tandem,
    render,
    worker_groups,
)

# ---------------------------------------------------------------- workers and GPUs


@pytest.mark.parametrize("name", ["default", "large", "big-pools", "cpu-kind"])
def test_gpus_reach_the_worker_containers(releases: Releases, name: str) -> None:
    r = releases[name]
    for role, group in worker_groups(r).items():
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"].get("limits", {})
        gpus = r.values.get("workers", {}).get(role, {}).get("gpus", 1)
        if gpus:
            assert limits["nvidia.com/gpu"] == gpus, role
        else:
            assert "nvidia.com/gpu" not in limits, role
        # The requests the values give survive next to the GPUs the chart adds.
        assert container["resources"]["requests"]["memory"]


def test_worker_groups_take_their_sizes_from_the_values(releases: Releases) -> None:
    r = releases["big-pools"]
    groups = worker_groups(r)
    got = {
        role: (g["groupName"], g["replicas"], g["minReplicas"], g["maxReplicas"])
        for role, g in groups.items()
    }
    assert got == {"prefill": ("prefill", 8, 4, 32), "decode": ("decode", 16, 8, 64)}


def test_worker_command_starts_ray_then_execs_the_worker(releases: Releases) -> None:
    r = releases["default"]
    cluster = r.raycluster()
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert cluster["spec"]["enableInTreeAutoscaling"] is False
    for role, group in worker_groups(r).items():
        # KubeRay treats the first container as the Ray container.
        container = group["template"]["spec"]["containers"][0]
        command = container["command"]
        assert command[:2] == ["/bin/bash", "-c"] and command[3] == "tandem-worker"
        assert "KUBERAY_GEN_RAY_START_CMD" in command[2]
        assert 'exec tandem worker "$@"' in command[2]
        env = env_of(container)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        args = parse_tandem(["worker", *container["args"]])
        assert args.role == role
        # Worker ids are pod names: the KubeRay actuator removes pods by worker id.
        assert args.worker_id == "$(POD_NAME)" and args.advertise_host == "$(POD_IP)"
        assert (args.host, args.port) == ("0.0.0.0", 50051)
        assert args.model is None  # the image's default model
        assert args.drain_timeout_s == 60


def test_worker_args_follow_the_engine_values(releases: Releases) -> None:
    r = releases["large"]
    for group in worker_groups(r).values():
        args = parse_tandem(["worker", *group["template"]["spec"]["containers"][0]["args"]])
        assert args.model == "/models/Qwen/Qwen2.5-7B-Instruct"
        assert (args.kv_cache_gb, args.max_num_seqs, args.max_num_batched_tokens) == (40, 256, 8192)
    r = releases["open"]
    for group in worker_groups(r).values():
        args = parse_tandem(["worker", *group["template"]["spec"]["containers"][0]["args"]])
        assert args.engine == "mock"


def test_tensor_parallel_workers_get_the_size_and_the_gpus(chart: helm_python.Chart) -> None:
    group = {"gpus": 4, "tensorParallelSize": 4}
    r = render(chart, {"workers": {"prefill": group, "decode": group}})
    for role, g in worker_groups(r).items():
        (container,) = g["template"]["spec"]["containers"]
        assert parse_tandem(["worker", *container["args"]]).tensor_parallel_size == 4, role
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4, role
    for g in worker_groups(render(chart, {})).values():  # the default: one process
        (container,) = g["template"]["spec"]["containers"]
        args = parse_tandem(["worker", *container["args"]])
        assert (args.tensor_parallel_size, args.kv_head_groups) == (1, 1)


def test_groups_of_different_sizes_lay_the_smaller_ones_kv_out_in_head_groups(
    chart: helm_python.Chart,
) -> None:
    """A decode rank reads whole head groups from prefill ranks: the group with fewer
    ranks holds (larger size / its size) head groups a cache."""
    for prefill, decode in ((4, 2), (2, 8)):
        r = render(
            chart,
            {
                "workers": {
                    "prefill": {"gpus": prefill, "tensorParallelSize": prefill},
                    "decode": {"gpus": decode, "tensorParallelSize": decode},
                }
            },
        )
        got = {}
        for role, g in worker_groups(r).items():
            (container,) = g["template"]["spec"]["containers"]
            args = parse_tandem(["worker", *container["args"]])
            got[role] = (args.tensor_parallel_size, args.kv_head_groups)
        larger = max(prefill, decode)
        want = {"prefill": (prefill, larger // prefill), "decode": (decode, larger // decode)}
        assert got == want


def test_worker_probes_are_grpc_health_checks(release: Rendered) -> None:
    port = release.values.get("workers", {}).get("port", 50051)
    for group in worker_groups(release).values():
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": port}, probe


def test_dev_shm_is_memory_backed(release: Rendered) -> None:
    for group in worker_groups(release).values():
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [
            m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"
        ]
        shm = volumes[mount["name"]]["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"]


def test_rdma_resources_annotations_and_environment(releases: Releases) -> None:
    for name, resource, count, fallback, ipc_lock in [
        ("large", "rdma/ib", 1, "fail", True),
        ("rdma", "rdma/roce_gdr", 2, "warn", False),
    ]:
        r = releases[name]
        for group in worker_groups(r).values():
            template = group["template"]
            container = template["spec"]["containers"][0]
            assert container["resources"]["limits"][resource] == count
            assert "k8s.v1.cni.cncf.io/networks" in template["metadata"]["annotations"]
            env = env_of(container)
            assert env["TANDEM_RDMA_REQUIRED"]["value"] == "1"
            assert env["TANDEM_RDMA_ON_FALLBACK"]["value"] == fallback
            assert env["UCX_TLS"]["value"]
            devices = env.get("UCX_NET_DEVICES", {}).get("value")
            assert devices == ("mlx5_0:1,mlx5_1:1" if name == "rdma" else None)
            added = container["securityContext"]["capabilities"].get("add", [])
            assert added == (["IPC_LOCK"] if ipc_lock else [])
    # A group's own annotations stay beside the network's.
    decode = worker_groups(releases["rdma"])["decode"]["template"]["metadata"]["annotations"]
    assert decode["example.com/team"] == "inference"
    # Without RDMA: none of it.
    for group in worker_groups(releases["default"]).values():
        container = group["template"]["spec"]["containers"][0]
        assert not {"UCX_TLS", "TANDEM_RDMA_REQUIRED"} & set(env_of(container))
        assert "annotations" not in group["template"]["metadata"]


@pytest.mark.parametrize("name", ["default", "large", "rdma"])
def test_rdma_environment_is_what_the_worker_preflight_reads(releases: Releases, name: str) -> None:
    """services/worker/preflight.py reads these variables; its own parser must accept them,
    and the chart's default UCX_TLS must leave UCX its InfiniBand transports."""
    from services.worker.preflight import RdmaSettings
    from services.worker.ucx import Transport, allowed_by_tls

    rdma = releases[name].values.get("workers", {}).get("rdma", {})
    for group in worker_groups(releases[name]).values():
        env = env_of(group["template"]["spec"]["containers"][0])
        literal = {k: v["value"] for k, v in env.items() if "value" in v}
        settings = RdmaSettings.from_env(literal)
        assert settings.required is rdma.get("enabled", False)
        if settings.required:
            assert settings.policy == rdma["onTcpFallback"]
            assert settings.net_devices == rdma.get("netDevices")
            assert allowed_by_tls(Transport("rc_mlx5", "mlx5_0:1"), settings.ucx_tls)
            assert not allowed_by_tls(Transport("tcp", "eth0"), settings.ucx_tls)


def test_workers_keep_the_autoscalers_size_only_through_lookup(releases: Releases) -> None:
    """Offline `lookup` finds no RayCluster, so the values' replicas are used (the upgrade
    path that keeps the autoscaler's size needs a cluster)."""
    groups = worker_groups(releases["large"])
    assert (groups["prefill"]["replicas"], groups["decode"]["replicas"]) == (4, 8)
