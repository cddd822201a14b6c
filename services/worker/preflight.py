"""The worker's RDMA preflight: when RDMA was asked for, check that UCX (what NIXL moves KV
blocks with) can use it, before the engine loads.

UCX falls back to TCP without a word when it finds no RDMA transport it may use (a pod
without the RDMA NIC, a port that is down, a UCX_TLS or UCX_NET_DEVICES that leaves the RDMA
transports out), and transfers still succeed, only far slower: a peer's users lost 1.8 s per
transfer to that. So a worker told that RDMA is required looks first:

    TANDEM_RDMA_REQUIRED      1: RDMA was requested (the Helm chart sets it on RDMA nodes);
                              unset or 0: nothing is checked and nothing is run
    TANDEM_RDMA_ON_FALLBACK   fail (default): exit, naming what was found and what to fix;
                              warn: log a WARNING and serve over TCP

What the host offers comes from `ucx_info -d` (UCX's own list of transports and devices),
else from the active ports the kernel shows under /sys/class/infiniband. UCX_TLS and
UCX_NET_DEVICES, which narrow what UCX may pick, are then applied here as UCX applies them
(so the answer does not hang on whether `ucx_info` heeds them). RDMA is usable when one of
RDMA_TRANSPORTS survives on one of its devices; tcp (IPoIB included), self and the
shared-memory transports never count. `ucx_info` may come from the system's UCX while
NIXL loads the copy its wheel bundles: both see the same devices, which is what this check
is about.

The environment is read in one place, `run_preflight`; `check_rdma` is pure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from services.worker.ucx import (
    Transport,
    UcxInfo,
    allowed_by_devices,
    allowed_by_tls,
    probe_ucx,
)

log = logging.getLogger(__name__)

REQUIRED_ENV = "TANDEM_RDMA_REQUIRED"
POLICY_ENV = "TANDEM_RDMA_ON_FALLBACK"
POLICIES = ("fail", "warn")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class RdmaSettings:
    required: bool = False
    policy: str = "fail"
    ucx_tls: str | None = None
    net_devices: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RdmaSettings:
        required = env.get(REQUIRED_ENV, "").strip().lower()
        if required not in _TRUE + _FALSE:
            raise ValueError(f"{REQUIRED_ENV}={env[REQUIRED_ENV]!r}: expected 1 or 0")
        policy = env.get(POLICY_ENV, "").strip().lower() or "fail"
        if policy not in POLICIES:
            raise ValueError(f"{POLICY_ENV}={env[POLICY_ENV]!r}: expected fail or warn")
        return cls(
            required=required in _TRUE,
            policy=policy,
            ucx_tls=env.get("UCX_TLS") or None,
            net_devices=env.get("UCX_NET_DEVICES") or None,
        )


@dataclass(frozen=True, slots=True)
class PreflightResult:
    settings: RdmaSettings
    info: UcxInfo | None = None  # None: not required, nothing looked at
    usable: tuple[Transport, ...] = ()  # what UCX_TLS and UCX_NET_DEVICES leave
    message: str = ""

    @property
    def rdma(self) -> tuple[Transport, ...]:
        return tuple(t for t in self.usable if t.rdma)

    @property
    def action(self) -> str:
        """skip (not required), ok (RDMA usable), or the fallback policy: warn or fail."""
        if self.info is None:
            return "skip"
        return "ok" if self.rdma else self.settings.policy


def check_rdma(env: Mapping[str, str], probe: Callable[[], UcxInfo]) -> PreflightResult:
    """Whether UCX can move KV blocks over RDMA here, and what to say about it. Runs
    `probe` only when RDMA is required. Raises ValueError on a setting it cannot read."""
    settings = RdmaSettings.from_env(env)
    if not settings.required:
        return PreflightResult(settings)
    info = probe()
    usable = tuple(
        t
        for t in info.transports
        if allowed_by_tls(t, settings.ucx_tls) and allowed_by_devices(t, settings.net_devices)
    )
    result = PreflightResult(settings, info, usable)
    return replace(result, message=_message(result, info))


def _list(transports: tuple[Transport, ...]) -> str:
    """rc_mlx5(mlx5_0:1,mlx5_1:1), tcp(eth0), self(memory)"""
    by_name: dict[str, list[str]] = {}
    for t in transports:
        by_name.setdefault(t.name, []).append(t.device)
    return ", ".join(f"{n}({','.join(d)})" for n, d in by_name.items()) or "none"


def _message(r: PreflightResult, info: UcxInfo) -> str:
    s = r.settings
    where = info.source + (f"; {info.note}" if info.note else "")
    env = f"UCX_TLS={s.ucx_tls or '(unset)'}" + (
        f", UCX_NET_DEVICES={s.net_devices}" if s.net_devices else ""
    )
    if r.rdma:
        return f"RDMA preflight: UCX can use {_list(r.rdma)} (from {where}; {env})"
    offered = tuple(t for t in info.transports if t.rdma)
    found = _list(info.transports)
    head = (
        f"RDMA was requested ({REQUIRED_ENV}=1) but UCX can only move KV blocks over TCP "
        f"here: found {found} (from {where}); {env}. "
    )
    if not offered:
        fix = (
            "No RDMA device is visible to this process: give the pod the RDMA NIC (the "
            "RDMA device plugin's resource, or /dev/infiniband with the IPC_LOCK "
            "capability), check that its port is ACTIVE (ibstat) and that `ucx_info -d` "
            "lists rc_mlx5, dc_mlx5 or rc_verbs."
        )
    elif not any(allowed_by_tls(t, s.ucx_tls) for t in offered):
        fix = (
            f"UCX_TLS={s.ucx_tls} leaves out the RDMA transports this host has "
            f"({_list(offered)}): unset it, or add rc (or dc, ud) to it."
        )
    else:
        fix = (
            f"UCX_NET_DEVICES={s.net_devices} leaves out the RDMA devices this host has "
            f"({_list(offered)}): add them to it, or unset it."
        )
    if s.policy == "fail":
        fix += f" To serve over TCP anyway, set {POLICY_ENV}=warn."
    return head + fix


def run_preflight(
    env: Mapping[str, str] | None = None, probe: Callable[[], UcxInfo] = probe_ucx
) -> PreflightResult:
    """At worker start, before the engine is built: log what was found in one line, and
    exit (SystemExit) when RDMA is required, only TCP is there and the policy is fail.
    Reads the process's environment (when `env` is not given): the one place it does."""
    env = os.environ if env is None else env
    try:
        result = check_rdma(env, probe)
    except ValueError as e:
        raise SystemExit(f"RDMA preflight: {e}") from None
    if result.action == "ok":
        log.info("%s", result.message)
    elif result.action == "warn":
        log.warning("%s", result.message)
    elif result.action == "fail":
        log.error("%s", result.message)
        raise SystemExit(result.message)
    return result
