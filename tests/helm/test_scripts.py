"""The shell and Python the chart puts into containers, run here with stand-ins for the
programs they call (`ray`, `tandem`, `redis-server`, the Hugging Face Hub, the router), so
what a pod would do is checked, not only what its manifest says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helm.conftest import Releases
from tests.helm.manifests import env_of, kube_expand, pods_of, worker_groups

# What KubeRay puts in KUBERAY_GEN_RAY_START_CMD (pod.go, generateRayStartCommand): flags
# sorted, each with a space either side, --block always, JSON in single quotes.
GENERATED_WORKER_CMD = (
    "ray start  --address=demo-tandem-head-svc.llm.svc.cluster.local:6379  --block "
    " --dashboard-agent-listen-port=52365  --metrics-export-port=8080  --num-cpus=8 "
    """ --object-store-memory=1073741824  --resources='{"TPU":4}' """
)
GENERATED_HEAD_CMD = "ray start --head  --block  --dashboard-host=0.0.0.0  --num-cpus=0 "


def _recorder(bin_dir: Path, name: str, log: Path, exit_code: int = 0) -> None:
    """A program `name` that appends its pid, argv and stdin (JSON) to `log`."""
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "stdin = '' if sys.stdin.isatty() else sys.stdin.read()\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        f"    f.write(json.dumps([{name!r}, os.getpid(), sys.argv[1:], stdin]) + '\\n')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)


def _calls(log: Path) -> list[list[Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def fake_bin(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    yield bin_dir, tmp_path / "calls.jsonl"


def _run(command: list[str], env: dict[str, str], bin_dir: Path) -> subprocess.Popen[str]:
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    return subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL, text=True)


def test_worker_container_runs_ray_without_block_then_becomes_the_worker(
    releases: Releases, fake_bin: tuple[Path, Path]
) -> None:
    bin_dir, log = fake_bin
    _recorder(bin_dir, "ray", log)
    _recorder(bin_dir, "tandem", log)
    container = worker_groups(releases["default"])["decode"]["template"]["spec"]["containers"][0]
    pod_env = {"POD_NAME": "demo-tandem-decode-worker-x7k2p", "POD_IP": "10.244.1.7"}
    args = [kube_expand(a, pod_env) for a in container["args"]]
    proc = _run(
        [*container["command"], *args],
        {**pod_env, "KUBERAY_GEN_RAY_START_CMD": GENERATED_WORKER_CMD},
        bin_dir,
    )
    assert proc.wait(30) == 0
    (ray, tandem) = _calls(log)
    assert ray[0] == "ray" and "--block" not in ray[2]
    # eval reads the quotes as KubeRay's own `bash -c` would.
    assert ray[2][:2] == ["start", "--address=demo-tandem-head-svc.llm.svc.cluster.local:6379"]
    assert '--resources={"TPU":4}' in ray[2]
    assert tandem[0] == "tandem" and tandem[2][0] == "worker"
    assert "--worker-id=demo-tandem-decode-worker-x7k2p" in tandem[2]
    assert "--advertise-host=10.244.1.7" in tandem[2]
    # exec: the worker is the container's main process, the one SIGTERM reaches.
    assert tandem[1] == proc.pid


def test_worker_container_stops_when_ray_fails(
    releases: Releases, fake_bin: tuple[Path, Path]
) -> None:
    bin_dir, log = fake_bin
    _recorder(bin_dir, "ray", log, exit_code=1)
    _recorder(bin_dir, "tandem", log)
    container = worker_groups(releases["default"])["prefill"]["template"]["spec"]["containers"][0]
    proc = _run(
        [*container["command"], *container["args"]],
        {"KUBERAY_GEN_RAY_START_CMD": GENERATED_WORKER_CMD},
        bin_dir,
    )
    assert proc.wait(30) != 0
    assert [c[0] for c in _calls(log)] == ["ray"]


def test_head_container_execs_the_blocking_ray_start(
    releases: Releases, fake_bin: tuple[Path, Path]
) -> None:
    bin_dir, log = fake_bin
    _recorder(bin_dir, "ray", log)
    head = releases["default"].raycluster()["spec"]["headGroupSpec"]["template"]["spec"]
    proc = _run(
        head["containers"][0]["command"], {"KUBERAY_GEN_RAY_START_CMD": GENERATED_HEAD_CMD}, bin_dir
    )
    assert proc.wait(30) == 0
    ((name, pid, argv, _),) = _calls(log)
    assert argv == ["start", "--head", "--block", "--dashboard-host=0.0.0.0", "--num-cpus=0"]
    assert pid == proc.pid


def test_redis_gets_its_password_on_stdin(releases: Releases, fake_bin: tuple[Path, Path]) -> None:
    bin_dir, log = fake_bin
    _recorder(bin_dir, "redis-server", log)
    (pod,) = pods_of(releases["default"], "redis")
    (container,) = pod.spec["containers"]
    proc = _run(container["command"], {"REDIS_PASSWORD": "s3cretPW"}, bin_dir)
    assert proc.wait(30) == 0
    ((_, pid, argv, stdin),) = _calls(log)
    assert argv == ["-"] and pid == proc.pid
    config = stdin.splitlines()
    assert 'requirepass "s3cretPW"' in config
    assert {'save ""', "appendonly no", "port 6379"} <= set(config)


def test_model_download_fills_the_cache_then_marks_it(releases: Releases, tmp_path: Path) -> None:
    """The Job's script, with a stand-in huggingface_hub that records what it was asked."""
    fake = tmp_path / "fake_hub" / "huggingface_hub"
    fake.mkdir(parents=True)
    record = tmp_path / "hub.json"
    (fake / "__init__.py").write_text(
        "import json\n"
        "def snapshot_download(**kw):\n"
        f"    open({str(record)!r}, 'w').write(json.dumps({{k: str(v) for k, v in kw.items()}}))\n"
    )
    (job,) = releases["large"].all("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    target, marker = tmp_path / "models" / "Qwen", tmp_path / "models" / "Qwen" / ".done"
    assert env["MARKER"] == env["TARGET_DIR"] + "/.tandem-download-complete"
    env |= {"TARGET_DIR": str(target), "MARKER": str(marker), "HF_TOKEN": "hf_x"}
    target.mkdir(parents=True)
    assert container["command"][0] == "python"
    done = subprocess.run(
        [sys.executable, *container["command"][1:]],
        env={**env, "PYTHONPATH": str(fake.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    asked = json.loads(record.read_text())
    assert asked == {
        "repo_id": "Qwen/Qwen2.5-7B-Instruct",
        "revision": "main",
        "local_dir": str(target),
        "token": "hf_x",
    }
    assert marker.exists()
    # The pods that load the model wait for exactly this marker.
    for pod in pods_of(releases["large"], "worker"):
        (wait,) = pod.spec["initContainers"]
        assert env_of(wait)["MARKER"]["value"] == job_marker(job)


def job_marker(job: dict[str, Any]) -> str:
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    return str(env["MARKER"]["value"])


class _FakeRouter(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions, answering 503 to the first completion (a router
    whose workers are still starting)."""

    answer: dict[str, Any] = {}
    seen: list[tuple[str, str | None]] = []
    refused_once = False

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        self._send(200, {"object": "list", "data": [{"id": "SmolLM2-135M-Instruct"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization")))
        assert body["model"] == "SmolLM2-135M-Instruct"
        if not type(self).refused_once:
            type(self).refused_once = True
            self._send(503, {"error": {"message": "no worker yet"}})
            return
        self._send(200, self.answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_router() -> Iterator[tuple[str, type[_FakeRouter]]]:
    handler = type("Handler", (_FakeRouter,), {"seen": [], "refused_once": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _run_chat_test(releases: Releases, url: str) -> subprocess.CompletedProcess[str]:
    (pod,) = releases["default"].all("Pod")
    command = pod["spec"]["containers"][0]["command"]
    env = {
        **os.environ,
        "ROUTER_URL": url,
        "TANDEM_API_KEY": "key-1,key-2",
        "TIMEOUT_S": "30",
        "RETRY_S": "0.05",
    }
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=60
    )


def test_helm_test_script_passes_on_a_real_answer(
    releases: Releases, fake_router: tuple[str, type[_FakeRouter]]
) -> None:
    url, handler = fake_router
    handler.answer = {"choices": [{"message": {"role": "assistant", "content": "Paris."}}]}
    done = _run_chat_test(releases, url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK SmolLM2-135M-Instruct: 'Paris.'" in done.stdout
    # The first key of the Secret's list, and a retry after the 503.
    assert handler.seen == [
        ("/v1/models", "Bearer key-1"),
        ("/v1/chat/completions", "Bearer key-1"),
        ("/v1/chat/completions", "Bearer key-1"),
    ]


def test_helm_test_script_fails_without_content(
    releases: Releases, fake_router: tuple[str, type[_FakeRouter]]
) -> None:
    url, handler = fake_router
    handler.answer = {"choices": [{"message": {"role": "assistant", "content": None}}]}
    done = _run_chat_test(releases, url)
    assert done.returncode != 0
    assert "FAIL" in done.stderr
