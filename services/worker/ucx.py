"""What UCX (the library NIXL moves KV blocks with) can use on this host: the transports
and devices `ucx_info -d` lists (else the active RDMA ports in sysfs), and which of them
UCX_TLS and UCX_NET_DEVICES leave it, applied as UCX applies them. Read by the worker's
RDMA preflight (preflight.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

SYSFS_IB = Path("/sys/class/infiniband")

# Transports that move data over an RDMA NIC (InfiniBand or RoCE; srd: AWS EFA). "rc", "ud"
# and "dc" are older UCX's names; "ib" stands for a device seen in sysfs, transport unknown.
RDMA_TRANSPORTS = frozenset(
    {"rc", "rc_verbs", "rc_mlx5", "dc", "dc_mlx5", "ud", "ud_verbs", "ud_mlx5", "srd", "ib"}
)
# UCX_TLS aliases, as UCX expands them (its docs, "UCX_TLS"); any other name is itself.
_IB = {"rc_verbs", "rc_mlx5", "dc_mlx5", "ud_verbs", "ud_mlx5"}
_ALIASES: dict[str, set[str]] = {
    "ib": _IB | {"rc", "ud", "dc"},
    "rc": {"rc_verbs", "rc_mlx5", "rc"},
    "rc_v": {"rc_verbs", "rc"},
    "rc_x": {"rc_mlx5"},
    "ud": {"ud_verbs", "ud_mlx5", "ud"},
    "ud_v": {"ud_verbs", "ud"},
    "ud_x": {"ud_mlx5"},
    "dc": {"dc_mlx5", "dc"},
    "dc_x": {"dc_mlx5"},
    "sm": {"posix", "sysv", "cma", "knem", "xpmem"},
    "shm": {"posix", "sysv", "cma", "knem", "xpmem"},
    "mm": {"posix", "sysv", "xpmem"},
    "cuda": {"cuda_copy", "cuda_ipc", "gdr_copy"},
}


@dataclass(frozen=True, slots=True)
class Transport:
    name: str  # rc_mlx5, tcp, self, ...
    device: str  # mlx5_0:1, eth0, memory, ...
    kind: str = ""  # ucx_info's "Type": network, intra-node, loopback, ... ("": not given)

    @property
    def rdma(self) -> bool:
        return self.name in RDMA_TRANSPORTS

    @property
    def network(self) -> bool:
        """What UCX_NET_DEVICES narrows: network devices, not memory or loopback."""
        return self.kind == "network" or (not self.kind and (self.rdma or self.name == "tcp"))


@dataclass(frozen=True, slots=True)
class UcxInfo:
    """What the host offers UCX, and where that was learnt."""

    transports: tuple[Transport, ...]
    source: str  # "ucx_info -d" or the sysfs folder
    note: str = ""  # why the first choice was not used (ucx_info missing, failed)


# --- what the host offers -------------------------------------------------------------

_LINE = re.compile(r"^#\s*(Memory domain|Connection manager|Transport|Device|Type):\s*(\S+)")


def parse_ucx_info(text: str) -> tuple[Transport, ...]:
    """The (transport, device) pairs of `ucx_info -d`'s output, in its order, each once:

    #      Transport: rc_mlx5
    #         Device: mlx5_0:1
    #           Type: network
    """
    found: list[Transport] = []
    name: str | None = None
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        field, value = m.groups()
        if field == "Transport":
            name = value
        elif field == "Device" and name is not None:
            found.append(Transport(name, value))
        elif field == "Type" and name is not None and found and not found[-1].kind:
            found[-1] = replace(found[-1], kind=value)
        elif field in ("Memory domain", "Connection manager"):  # no transport until the next
            name = None
    return tuple(dict.fromkeys(found))


def sysfs_rdma_ports(root: Path = SYSFS_IB) -> tuple[Transport, ...]:
    """Active ports of the RDMA devices the kernel shows (`<dev>/ports/<n>/state` reads
    `4: ACTIVE`), as transport "ib": UCX's transport over them is not known from here."""
    if not root.is_dir():
        return ()
    found = []
    for state in sorted(root.glob("*/ports/*/state")):
        try:
            active = "ACTIVE" in state.read_text()
        except OSError:
            continue
        if active:
            port = state.parent
            found.append(Transport("ib", f"{port.parent.parent.name}:{port.name}", "network"))
    return tuple(found)


def probe_ucx(
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
    sysfs: Path = SYSFS_IB,
    timeout_s: float = 30.0,
) -> UcxInfo:
    """`ucx_info -d` when it is installed and answers, else the RDMA ports in sysfs."""
    exe = which("ucx_info")
    if exe is None:
        note = "ucx_info not found"
    else:
        try:
            done = run([exe, "-d"], capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            note = f"ucx_info -d failed ({e})"
        else:
            if done.returncode == 0:
                return UcxInfo(parse_ucx_info(done.stdout), "ucx_info -d")
            err = (done.stderr or "").strip().splitlines()
            note = f"ucx_info -d exited {done.returncode}" + (f" ({err[-1]})" if err else "")
    return UcxInfo(sysfs_rdma_ports(sysfs), str(sysfs), note)


# --- what UCX may use -------------------------------------------------------------------


def _names(tls: str) -> tuple[bool, set[str]]:
    """UCX_TLS as (excluding, transport names): `^a,b` excludes a and b. An `x:aux` entry
    lets x carry wire-up messages only, never data: it enables nothing here."""
    exclude = tls.startswith("^")
    names: set[str] = set()
    for item in tls.removeprefix("^").split(","):
        item = item.strip().lower()
        if not item or item.endswith(":aux"):
            continue
        names |= _ALIASES.get(item, {item})
    return exclude, names


def allowed_by_tls(t: Transport, tls: str | None) -> bool:
    if tls is None:
        return True
    exclude, names = _names(tls)
    if "all" in names:
        return not exclude
    if t.name == "ib":  # a sysfs device: usable while any IB transport is
        return not names >= _IB if exclude else bool(names & _IB)
    return (t.name in names) != exclude


def allowed_by_devices(t: Transport, devices: str | None) -> bool:
    if devices is None or not t.network:
        return True
    names = {d.strip() for d in devices.split(",") if d.strip()}
    return "all" in names or t.device in names
