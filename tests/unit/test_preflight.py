"""The worker's RDMA preflight (services/worker/preflight.py, ucx.py): `ucx_info -d`
parsed, the sysfs fallback, UCX_TLS / UCX_NET_DEVICES applied, and the policy matrix, on
canned host listings: no RDMA hardware needed."""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from services.worker import preflight, ucx
from services.worker.preflight import PreflightResult, check_rdma, run_preflight
from services.worker.ucx import Transport, UcxInfo, parse_ucx_info, probe_ucx, sysfs_rdma_ports

# A GPU node with a ConnectX NIC (UCX 1.16's `ucx_info -d`, capabilities cut short): RDMA
# transports on mlx5_0:1, TCP on eth0 and over IPoIB on ib0, shared memory, CUDA.
MLX5_HOST = """\
#
# Memory domain: self
#     Component: self
#             register: unlimited, cost: 0 nsec
#           remote key: 0 bytes
#         memory types: host (access,reg_nonblock,reg,cache)
#
#      Transport: self
#         Device: memory
#           Type: loopback
#  System device: <unknown>
#
#      capabilities:
#            bandwidth: 0.00/ppn + 19360.00 MB/sec
#              latency: 0 nsec
#
# Memory domain: tcp
#     Component: tcp
#             register: unlimited, cost: 0 nsec
#         memory types: host (access,reg_nonblock,reg,cache)
#
#      Transport: tcp
#         Device: eth0
#           Type: network
#  System device: <unknown>
#
#      capabilities:
#            bandwidth: 1131.64/ppn + 0.00 MB/sec
#              latency: 5776 nsec
#
#      Transport: tcp
#         Device: ib0
#           Type: network
#  System device: <unknown>
#
# Connection manager: tcp
#      max_conn_priv: 2064 bytes
#
# Memory domain: sysv
#     Component: sysv
#             allocate: unlimited
#         memory types: host (access,alloc,cache)
#
#      Transport: sysv
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
#
# Memory domain: posix
#     Component: posix
#             allocate: <= 263724452K
#         memory types: host (access,alloc,cache)
#
#      Transport: posix
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
#
# Memory domain: cuda_cpy
#     Component: cuda_cpy
#         memory types: host (reg), cuda (access,alloc,reg,detect)
#
#      Transport: cuda_copy
#         Device: cuda
#           Type: accelerator
#  System device: <unknown>
#
# Memory domain: mlx5_0
#     Component: ib
#             register: unlimited, cost: 16000 + 0.060 * N nsec
#           remote key: 8 bytes
#         memory types: host (access,reg,cache)
#
#      Transport: dc_mlx5
#         Device: mlx5_0:1
#           Type: network
#  System device: mlx5_0 (0)
#
#      capabilities:
#            bandwidth: 23588.47/ppn + 0.00 MB/sec
#              latency: 660 nsec
#
#      Transport: rc_verbs
#         Device: mlx5_0:1
#           Type: network
#  System device: mlx5_0 (0)
#
#      Transport: rc_mlx5
#         Device: mlx5_0:1
#           Type: network
#  System device: mlx5_0 (0)
#
#      Transport: ud_verbs
#         Device: mlx5_0:1
#           Type: network
#  System device: mlx5_0 (0)
#
#      Transport: ud_mlx5
#         Device: mlx5_0:1
#           Type: network
#  System device: mlx5_0 (0)
#
# Connection manager: rdmacm
#      max_conn_priv: 54 bytes
#
# Memory domain: cma
#     Component: cma
#             register: unlimited, cost: 9 nsec
#         memory types: host (access,reg_nonblock,reg,cache)
#
#      Transport: cma
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
"""

# A cloud VM (or a pod without the RDMA NIC): TCP and shared memory only.
TCP_HOST = """\
#
# Memory domain: self
#     Component: self
#
#      Transport: self
#         Device: memory
#           Type: loopback
#  System device: <unknown>
#
# Memory domain: tcp
#     Component: tcp
#
#      Transport: tcp
#         Device: ens5
#           Type: network
#  System device: <unknown>
#
# Connection manager: tcp
#      max_conn_priv: 2064 bytes
#
# Memory domain: sysv
#     Component: sysv
#
#      Transport: sysv
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
#
# Memory domain: posix
#     Component: posix
#
#      Transport: posix
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
#
# Memory domain: cma
#     Component: cma
#
#      Transport: cma
#         Device: memory
#           Type: intra-node
#  System device: <unknown>
"""

# An older UCX (1.8) on a RoCE host: no "Type:" lines, a bonded device.
OLD_UCX_ROCE_HOST = """\
#
# Memory domain: posix
#            component: posix
#
#   Transport: posix
#
#   Device: memory
#
# Memory domain: mlx5_bond_0
#            component: ib
#
#   Transport: rc_mlx5
#
#   Device: mlx5_bond_0:1
#
#   Transport: ud_mlx5
#
#   Device: mlx5_bond_0:1
#
# Memory domain: tcp
#            component: tcp
#
#   Transport: tcp
#
#   Device: bond0
"""


def canned(text: str) -> Callable[[], UcxInfo]:
    return lambda: UcxInfo(parse_ucx_info(text), "ucx_info -d")


def no_probe() -> UcxInfo:
    raise AssertionError("the host was probed although RDMA was not required")


REQUIRED = {"TANDEM_RDMA_REQUIRED": "1"}
WARN = {**REQUIRED, "TANDEM_RDMA_ON_FALLBACK": "warn"}


# --- parsing ----------------------------------------------------------------------------


def test_ucx_info_listing_becomes_transport_device_pairs() -> None:
    found = parse_ucx_info(MLX5_HOST)
    assert [(t.name, t.device) for t in found] == [
        ("self", "memory"),
        ("tcp", "eth0"),
        ("tcp", "ib0"),
        ("sysv", "memory"),
        ("posix", "memory"),
        ("cuda_copy", "cuda"),
        ("dc_mlx5", "mlx5_0:1"),
        ("rc_verbs", "mlx5_0:1"),
        ("rc_mlx5", "mlx5_0:1"),
        ("ud_verbs", "mlx5_0:1"),
        ("ud_mlx5", "mlx5_0:1"),
        ("cma", "memory"),
    ]
    kinds = {t.name: t.kind for t in found}
    assert kinds["rc_mlx5"] == "network" and kinds["posix"] == "intra-node"
    # TCP over IPoIB runs on the RDMA NIC but is still TCP.
    assert [t.device for t in found if t.rdma] == ["mlx5_0:1"] * 5
    assert not Transport("tcp", "ib0", "network").rdma


def test_older_listing_without_types_still_parses() -> None:
    found = parse_ucx_info(OLD_UCX_ROCE_HOST)
    assert [(t.name, t.device, t.kind) for t in found] == [
        ("posix", "memory", ""),
        ("rc_mlx5", "mlx5_bond_0:1", ""),
        ("ud_mlx5", "mlx5_bond_0:1", ""),
        ("tcp", "bond0", ""),
    ]
    # Without a type, RDMA transports and tcp are the network ones.
    assert [t.network for t in found] == [False, True, True, True]


def test_a_listing_with_nothing_in_it_has_no_transports() -> None:
    assert parse_ucx_info("") == ()
    assert parse_ucx_info("# Memory domain: self\n#     Component: self\n") == ()


# --- probing the host -------------------------------------------------------------------


def _port(root: Path, dev: str, port: int, state: str) -> None:
    d = root / dev / "ports" / str(port)
    d.mkdir(parents=True)
    (d / "state").write_text(state + "\n")


def test_sysfs_lists_active_rdma_ports_only(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "4: ACTIVE")
    _port(tmp_path, "mlx5_1", 1, "1: DOWN")
    assert sysfs_rdma_ports(tmp_path) == (Transport("ib", "mlx5_0:1", "network"),)
    assert sysfs_rdma_ports(tmp_path / "absent") == ()


def test_probe_runs_ucx_info_d_when_installed(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, MLX5_HOST, "")

    info = probe_ucx(run=run, which=lambda _: "/usr/bin/ucx_info", sysfs=tmp_path)
    assert calls == [["/usr/bin/ucx_info", "-d"]]
    assert info.source == "ucx_info -d" and info.note == ""
    assert Transport("rc_mlx5", "mlx5_0:1", "network") in info.transports


def test_probe_without_ucx_info_reads_sysfs(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "4: ACTIVE")

    def run(*a: object, **kw: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("nothing to run")

    info = probe_ucx(run=run, which=lambda _: None, sysfs=tmp_path)
    assert info == UcxInfo((Transport("ib", "mlx5_0:1", "network"),), str(tmp_path), info.note)
    assert info.note == "ucx_info not found"


def test_probe_falls_back_to_sysfs_when_ucx_info_fails(tmp_path: Path) -> None:
    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "ucx_info: error loading libuct\n")

    info = probe_ucx(run=run, which=lambda _: "/opt/ucx/bin/ucx_info", sysfs=tmp_path)
    assert info.transports == () and info.source == str(tmp_path)
    assert info.note == "ucx_info -d exited 1 (ucx_info: error loading libuct)"


def test_probe_on_this_machine_answers() -> None:
    info = probe_ucx()  # whatever this host has: it must not raise
    assert info.source in ("ucx_info -d", str(ucx.SYSFS_IB))


# --- the policy -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off"])
def test_not_required_checks_nothing(value: str | None) -> None:
    env = {} if value is None else {"TANDEM_RDMA_REQUIRED": value}
    result = check_rdma({**env, "UCX_TLS": "tcp"}, no_probe)
    assert result.action == "skip" and result.info is None


def test_rdma_host_passes_and_says_what_ucx_will_use(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=preflight.__name__):
        result = run_preflight(REQUIRED, canned(MLX5_HOST))
    assert result.action == "ok"
    assert {t.name for t in result.rdma} == {
        "dc_mlx5",
        "rc_verbs",
        "rc_mlx5",
        "ud_verbs",
        "ud_mlx5",
    }
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "RDMA preflight: UCX can use dc_mlx5(mlx5_0:1), rc_verbs(mlx5_0:1), "
        "rc_mlx5(mlx5_0:1), ud_verbs(mlx5_0:1), ud_mlx5(mlx5_0:1) "
        "(from ucx_info -d; UCX_TLS=(unset))"
    )


def test_tcp_only_host_fails_loudly_by_default() -> None:
    with pytest.raises(SystemExit) as exc:
        run_preflight(REQUIRED, canned(TCP_HOST))
    msg = str(exc.value)
    assert msg.startswith("RDMA was requested (TANDEM_RDMA_REQUIRED=1) but UCX can only")
    assert "found self(memory), tcp(ens5), sysv(memory), posix(memory), cma(memory)" in msg
    assert "UCX_TLS=(unset)" in msg
    assert "No RDMA device is visible" in msg and "ucx_info -d" in msg
    assert "set TANDEM_RDMA_ON_FALLBACK=warn" in msg


def test_tcp_only_host_with_warn_logs_a_warning_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=preflight.__name__):
        result = run_preflight(WARN, canned(TCP_HOST))
    assert result.action == "warn" and result.rdma == ()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "only move KV blocks over TCP" in record.getMessage()
    assert "ON_FALLBACK=warn" not in record.getMessage()  # that is what was set


def test_ucx_tls_tcp_on_an_rdma_host_is_a_fallback() -> None:
    result = check_rdma({**REQUIRED, "UCX_TLS": "tcp"}, canned(MLX5_HOST))
    assert result.action == "fail"
    assert [t.name for t in result.usable] == ["tcp", "tcp"]
    assert "UCX_TLS=tcp leaves out the RDMA transports this host has (dc_mlx5(mlx5_0:1)" in (
        result.message
    )
    assert "unset it, or add rc" in result.message


@pytest.mark.parametrize(
    ("tls", "action"),
    [
        ("all", "ok"),
        ("rc", "ok"),
        ("rc_x,sm,self", "ok"),
        ("dc,cuda_copy", "ok"),
        ("ib", "ok"),
        ("^tcp", "ok"),
        ("^rc", "ok"),  # dc and ud remain
        ("^ib", "fail"),
        ("^all", "fail"),
        ("tcp,ud:aux", "fail"),  # ud for wire-up only: the data still goes over TCP
        ("sm,self,tcp", "fail"),
        ("cuda_copy,cuda_ipc,tcp", "fail"),
        ("RC_MLX5", "ok"),
        ("rc,ud,sm,self,cuda_copy,cuda_ipc", "ok"),  # the Helm chart's default
    ],
)
def test_ucx_tls_decides_what_ucx_may_pick(tls: str, action: str) -> None:
    assert check_rdma({**REQUIRED, "UCX_TLS": tls}, canned(MLX5_HOST)).action == action


def test_old_transport_names_count_as_rdma() -> None:
    host = "# Memory domain: mlx5_0\n#   Transport: rc\n#   Device: mlx5_0:1\n"
    assert check_rdma(REQUIRED, canned(host)).action == "ok"
    assert check_rdma({**REQUIRED, "UCX_TLS": "ud"}, canned(host)).action == "fail"


def test_ucx_net_devices_without_the_rdma_nic_is_a_fallback() -> None:
    result = check_rdma({**REQUIRED, "UCX_NET_DEVICES": "eth0"}, canned(MLX5_HOST))
    assert result.action == "fail"
    assert "UCX_NET_DEVICES=eth0 leaves out the RDMA devices" in result.message
    assert "UCX_TLS=(unset), UCX_NET_DEVICES=eth0" in result.message
    # Memory transports are not network devices: the variable leaves them be.
    assert {t.name for t in result.usable} == {"self", "tcp", "sysv", "posix", "cuda_copy", "cma"}

    ok = check_rdma({**REQUIRED, "UCX_NET_DEVICES": "mlx5_0:1"}, canned(MLX5_HOST))
    assert ok.action == "ok"
    assert not any(t.name == "tcp" for t in ok.usable)
    assert check_rdma({**REQUIRED, "UCX_NET_DEVICES": "all"}, canned(MLX5_HOST)).action == "ok"


def test_old_listing_roce_host_passes_and_net_devices_apply_without_types() -> None:
    assert check_rdma(REQUIRED, canned(OLD_UCX_ROCE_HOST)).action == "ok"
    env = {**REQUIRED, "UCX_NET_DEVICES": "bond0"}
    assert check_rdma(env, canned(OLD_UCX_ROCE_HOST)).action == "fail"


def _sysfs_probe(root: Path) -> Callable[[], UcxInfo]:
    return lambda: probe_ucx(run=subprocess.run, which=lambda _: None, sysfs=root)


def test_ucx_info_missing_with_an_active_rdma_port_passes(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "4: ACTIVE")
    result = check_rdma(REQUIRED, _sysfs_probe(tmp_path))
    assert result.action == "ok"
    assert result.message == (
        f"RDMA preflight: UCX can use ib(mlx5_0:1) (from {tmp_path}; ucx_info not found; "
        "UCX_TLS=(unset))"
    )
    # Only the transports UCX_TLS leaves can run on the device.
    for tls, action in [("tcp", "fail"), ("^rc", "ok"), ("^ib", "fail"), ("dc_x", "ok")]:
        env = {**REQUIRED, "UCX_TLS": tls}
        assert check_rdma(env, _sysfs_probe(tmp_path)).action == action, tls


def test_ucx_info_missing_and_no_rdma_device_fails(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "1: DOWN")
    with pytest.raises(SystemExit) as exc:
        run_preflight(REQUIRED, _sysfs_probe(tmp_path))
    msg = str(exc.value)
    assert f"found none (from {tmp_path}; ucx_info not found)" in msg
    assert "No RDMA device is visible" in msg and "ACTIVE" in msg
    result = check_rdma(WARN, _sysfs_probe(tmp_path / "absent"))
    assert result.action == "warn"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TANDEM_RDMA_REQUIRED": "maybe"}, "TANDEM_RDMA_REQUIRED='maybe'"),
        ({**REQUIRED, "TANDEM_RDMA_ON_FALLBACK": "ignore"}, "TANDEM_RDMA_ON_FALLBACK='ignore'"),
    ],
)
def test_a_setting_that_cannot_be_read_stops_the_worker(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_rdma(env, no_probe)
    with pytest.raises(SystemExit, match=named):
        run_preflight(env, no_probe)


def test_settings_are_read_without_regard_to_case() -> None:
    env = {"TANDEM_RDMA_REQUIRED": "True", "TANDEM_RDMA_ON_FALLBACK": "WARN"}
    assert check_rdma(env, canned(TCP_HOST)).action == "warn"


def test_run_preflight_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_RDMA_REQUIRED", raising=False)
    assert run_preflight(probe=no_probe).action == "skip"
    monkeypatch.setenv("TANDEM_RDMA_REQUIRED", "1")
    monkeypatch.setenv("UCX_TLS", "tcp")
    with pytest.raises(SystemExit, match="UCX_TLS=tcp"):
        run_preflight(probe=canned(MLX5_HOST))


def test_tandem_worker_runs_the_preflight_before_building_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.worker import standalone as process

    def preflight_fails() -> PreflightResult:
        raise SystemExit("RDMA was requested ...")

    def engine_config(*a: object, **kw: object) -> object:
        raise AssertionError("the engine was configured before the preflight")

    monkeypatch.setattr(process, "run_preflight", preflight_fails)
    monkeypatch.setattr(process, "engine_config", engine_config)
    args = argparse.Namespace(role="decode", threads=None)
    with pytest.raises(SystemExit, match="RDMA was requested"):
        process.run_standalone(args, "model.gguf")
