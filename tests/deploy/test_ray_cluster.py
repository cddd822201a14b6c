"""deploy/ray-cluster.yaml, Ray's cluster launcher config for VMs: valid for Ray (its own
schema and config preparation, as `ray up` runs them), and every `tandem` command in it a
real command line of ours. Nothing is launched here."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import parse
from tests.deploy.test_dockerfiles import GPU, cu_tag, cuda_version, subcommands, torch_spec

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "deploy" / "ray-cluster.yaml"
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def commands(config: dict[str, Any]) -> list[str]:
    return [c for key in COMMAND_LISTS for c in config.get(key, [])]


def ray_schema() -> Path:
    spec = importlib.util.find_spec("ray")  # ray's folder, without importing it
    assert spec is not None and spec.origin is not None, "ray is a dependency of tandem"
    return Path(spec.origin).parent / "autoscaler" / "ray-schema.json"


def test_it_is_a_local_provider_config_with_placeholders(config: dict[str, Any]) -> None:
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    assert all(isinstance(c, str) for c in commands(config))


def test_it_validates_against_rays_own_schema(config: dict[str, Any]) -> None:
    import jsonschema

    path = ray_schema()
    if not path.exists():
        pytest.skip(f"this Ray ships no cluster config schema ({path})")
    jsonschema.validate(config, json.loads(path.read_text()))


def test_ray_up_accepts_it(config: dict[str, Any]) -> None:
    """What `ray up` does first: merge Ray's local-provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    node = prepared["available_node_types"][prepared["head_node_type"]]
    workers = len(config["provider"]["worker_ips"])
    assert node["min_workers"] == node["max_workers"] == workers  # every listed VM joins
    # Ours, not Ray's defaults, start the nodes.
    assert prepared["head_start_ray_commands"] == config["head_start_ray_commands"]


def test_every_command_is_valid_bash(config: dict[str, Any]) -> None:
    """Ray runs each command with bash on the node: a syntax error would stop `ray up`."""
    for command in commands(config):
        done = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr}"


def tandem_command_lines(config: dict[str, Any]) -> list[list[str]]:
    """Each `tandem ...` command line in the config, up to the shell's next operator."""
    out = []
    for command in commands(config):
        for m in re.finditer(r"(?:^|[\s;&|(])tandem\s+([^'\"&;|<>()]*)", command):
            out.append(shlex.split(m.group(1)))
    return out


def test_every_tandem_command_is_real(config: dict[str, Any]) -> None:
    from services.cli import build_parser

    lines = tandem_command_lines(config)
    assert {line[0] for line in lines} == {"models", "serve"}
    parser = build_parser()
    for argv in lines:
        assert argv[0] in subcommands(parser), argv
        parser.parse_args(argv)  # a flag tandem does not have exits 2


def test_serve_joins_the_ray_cluster_with_both_pools(config: dict[str, Any]) -> None:
    from services.cli import build_parser

    text = " ".join(config["head_start_ray_commands"])
    m = re.search(r"RAY_ADDRESS=auto tandem serve ([^'\"&;|<>]*)", text)
    assert m, "tandem serve must join this Ray (RAY_ADDRESS), not start its own"
    args = build_parser().parse_args(["serve", *shlex.split(m.group(1))])
    assert args.mode == "disagg" and args.prefill_workers >= 1 and args.decode_workers >= 1
    assert args.host == "0.0.0.0"  # the router is reached from outside the head
    assert args.redis_url is None  # the URL carries a password: TANDEM_REDIS_URL, not argv
    assert "export TANDEM_REDIS_URL=" in text
    # It starts only once every node has joined (it sizes its pools from their GPUs).
    waits = text.index("deploy/ray_wait_nodes.py &&")
    assert waits < text.index("tandem serve")


def wait_nodes_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "ray_wait_nodes", ROOT / "deploy" / "ray_wait_nodes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wait_counts_the_head_and_every_worker(config: dict[str, Any]) -> None:
    module = wait_nodes_module()
    assert module.expected_nodes(config) == 1 + len(config["provider"]["worker_ips"])
    assert module.expected_nodes({"provider": {"type": "local"}}) == 1
    assert "~/tandem: ." in CONFIG_PATH.read_text()  # where ~/tandem/deploy/... comes from


def test_the_wait_ends_when_all_nodes_are_alive_or_at_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = wait_nodes_module()
    alive = [[True], [True, True], [True, True, False, True]]  # what ray.nodes() shows in turn
    fake = types.SimpleNamespace(
        init=lambda **kw: None,
        shutdown=lambda: None,
        nodes=lambda: [{"Alive": a} for a in (alive.pop(0) if len(alive) > 1 else alive[0])],
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(yaml.safe_dump({"provider": {"type": "local", "worker_ips": ["a", "b"]}}))
    assert module.main([str(cfg)]) == 0
    assert "all 3 Ray nodes alive" in capsys.readouterr().out
    alive[:] = [[True, False]]
    assert module.main([str(cfg), "--timeout-s", "0"]) == 1
    assert "only 1 of 3 Ray nodes joined" in capsys.readouterr().err


def test_nodes_install_what_the_gpu_image_installs(config: dict[str, Any]) -> None:
    setup = " ".join(config["setup_commands"])
    pins = re.findall(r"(?<![\w-])torch[=<>~!]\S*", setup)
    assert pins and set(pins) == {torch_spec()}, pins
    cuda = cu_tag(cuda_version(parse(GPU).final.base))
    assert set(re.findall(r"/whl/(cu\d+)", setup)) == {cuda}
    image_version = parse(GPU).stages[0].args()["FLASHINFER_VERSION"]
    for name in ("flashinfer-python", "flashinfer-jit-cache"):
        assert f"{name}=={image_version}" in setup, name
    assert "tandem models pull" in setup  # on every node: workers open the head's path


def test_redis_and_ray_do_not_share_a_port(config: dict[str, Any]) -> None:
    text = " ".join(config["head_start_ray_commands"])
    ray_port = re.search(r"ray start --head --port=(\d+)", text)
    redis_port = re.search(r'"port (\d+)"', text)
    assert ray_port and redis_port
    assert ray_port.group(1) != redis_port.group(1)
    assert f":{redis_port.group(1)}/0" in text  # the URL the workers get


def test_no_secret_is_written_into_the_config(config: dict[str, Any]) -> None:
    text = CONFIG_PATH.read_text()
    # Secrets are made on the head (~/.tandem/env, mode 600), never written here.
    assert not re.search(r"(PASSWORD|TOKEN|API_KEY|SECRET)\s*[=:]\s*[\w-]{8,}", text)
    assert "requirepass $TANDEM_REDIS_PASSWORD" in text and "umask 077" in text
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert {".git", ".venv"} <= set(config["rsync_exclude"])
    # Ray's token auth on every node: the command runner's shells read ~/.bashrc.
    assert "export RAY_AUTH_MODE=token" in text
