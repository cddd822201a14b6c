"""The chart's command lines, run for real: the router's and both worker groups' containers
of the rendered values-cpu-kind.yaml (what a kind cluster runs) started here as local
processes, the way their pods start them (command, args and env as rendered, with the
kubelet's $(VAR) expansion), against a local Redis; then a chat completion through the
router, and the `helm test` pod's own command against it. So the flags and environment the
chart gives `tandem router` and `tandem worker` are proven to serve, not only to parse.

What differs from a pod, and why:
  - addresses: 0.0.0.0 and the fixed ports become 127.0.0.1 and free ports (tests stay on
    loopback, and two workers cannot share 50051, nor 9090 for metrics, on one host); the
    Services' DNS names
    become the local processes' addresses;
  - `ray start` (KubeRay's generated command, which the worker's script runs first) is a
    stand-in that exits 0: there is no Ray head here. `tandem worker` itself is real;
  - Secrets and the downward API (pod name, pod IP) are filled in here;
  - TANDEM_MODEL_CACHE, which the CPU image sets (deploy/Dockerfile.cpu), points at the
    model pulled for the tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.env import model_cache_dir
from services.cluster.models import pull_default
from services.cluster.redis_server import RedisServer, free_port
from tests.helm.conftest import Releases
from tests.helm.manifests import Obj, Rendered, kube_expand, worker_groups

VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 240.0  # two workers load the real model on a shared 2-core machine
API_KEY = "sk-local-" + secrets.token_hex(8)


def _secrets(r: Rendered, redis_password: str) -> dict[tuple[str, str], str]:
    """Each secretKeyRef the chart's pods read, given a value here."""
    full = r.fullname
    return {
        (f"{full}-redis", "redis-password"): redis_password,
        (f"{full}-cluster-token", "cluster-token"): secrets.token_hex(16),
        (f"{full}-api-keys", "api-keys"): API_KEY,
    }


def _env(
    container: Obj, known: Mapping[tuple[str, str], str], fields: Mapping[str, str]
) -> dict[str, str]:
    """A container's env as the kubelet makes it: in order, each value with $(VAR) of the
    ones before it expanded, secretKeyRef and fieldRef resolved."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = kube_expand(e["value"], env)
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = known[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _local(args: list[str], port: int) -> list[str]:
    """Loopback and a free port instead of every interface and the pod's fixed port."""
    out = []
    for a in args:
        if a == "--host=0.0.0.0":
            a = "--host=127.0.0.1"
        elif a.startswith("--port="):
            a = f"--port={port}"
        elif a.startswith(("--metrics-port=", "--stream-port=")):
            a = a.split("=")[0] + "=0"  # the worker takes a free one
        out.append(a)
    assert out != args, "the chart no longer passes --host=0.0.0.0 / --port: update this test"
    return out


class Local:
    """The processes started here, stopped by pid at the end (SIGTERM: they drain)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.tail(name)}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _base_env(fake_bin: Path) -> dict[str, str]:
    # PATH: the stand-in `ray` first, then the venv's `tandem`; nothing else is inherited
    # but what a container has (HOME for Python's caches).
    return {
        "PATH": f"{fake_bin}:{VENV_BIN}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "TANDEM_MODEL_CACHE": str(model_cache_dir()),
    }


def _wait_ready(url: str, local: Local) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        local.check_alive()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        time.sleep(1)
    logs = "".join(f"\n--- {name}.log ---\n{local.tail(name)}" for name, _ in local.procs)
    raise AssertionError(f"the router was not ready within {READY_TIMEOUT_S:g} s{logs}")


@pytest.fixture(scope="module")
def served(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cpu-kind release's router and workers, running here; yields the router's URL."""
    pull_default()
    r = releases["cpu-kind"]
    tmp = tmp_path_factory.mktemp("helm-local")
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    (fake_bin / "ray").write_text("#!/bin/sh\nexit 0\n")  # KubeRay's `ray start`, stood in
    (fake_bin / "ray").chmod(0o755)
    redis_host = f"{r.fullname}-redis.llm.svc:6379"
    with RedisServer() as redis:
        known = _secrets(r, redis.password)
        local = Local(tmp)
        try:
            for role, group in sorted(worker_groups(r).items()):
                c = group["template"]["spec"]["containers"][0]
                pod = f"{r.fullname}-{role}-worker-local"
                env = _env(c, known, {"metadata.name": pod, "status.podIP": "127.0.0.1"})
                env["TANDEM_REDIS_URL"] = env["TANDEM_REDIS_URL"].replace(
                    redis_host, f"127.0.0.1:{redis.port}"
                )
                args = [kube_expand(a, env) for a in _local(c["args"], free_port())]
                env = {**_base_env(fake_bin), **env, "KUBERAY_GEN_RAY_START_CMD": "ray start"}
                local.start(role, [*c["command"], *args], env)
            c = r.one("Deployment", "router")["spec"]["template"]["spec"]["containers"][0]
            env = _env(c, known, {})
            env["TANDEM_REDIS_URL"] = env["TANDEM_REDIS_URL"].replace(
                redis_host, f"127.0.0.1:{redis.port}"
            )
            port = free_port()
            args = [kube_expand(a, env) for a in _local(c["args"], port)]
            local.start("router", [*c["command"], *args], {**_base_env(fake_bin), **env})
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, local)
            yield url
        finally:
            local.stop()


def _chat(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    model = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_the_charts_commands_serve_a_chat_completion(served: str) -> None:
    r = _chat(served, API_KEY)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] >= 1
    # The key from the chart's Secret is required; the probes' paths are not.
    assert httpx.get(f"{served}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{served}/ready", timeout=10).json() == {"status": "ready"}


def test_the_helm_test_pods_command_passes_against_it(served: str, releases: Releases) -> None:
    r = releases["cpu-kind"]
    (pod,) = [p for p in r.all("Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    c = pod["spec"]["containers"][0]
    env = _env(c, {(f"{r.fullname}-api-keys", "api-keys"): API_KEY}, {})
    env["ROUTER_URL"] = served  # the router Service's name, here its local address
    assert c["command"][0] == "python"  # the image's; here this venv's
    done = subprocess.run(
        [sys.executable, *c["command"][1:]],
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK ")
