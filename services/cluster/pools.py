"""Worker pools as Ray actors: one actor per worker, named `<role>-<n>` in our namespace,
so the Ray dashboard lists each worker with its logs and state.

Each actor asks Ray for what one worker needs (a GPU on CUDA, CPUs here) and gives torch
exactly the CPU threads it was granted: two workers on a 2-core laptop get one each
instead of fighting over both.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray

from engine import EngineConfig
from services.worker.core import WorkerConfig
from services.worker.preflight import run_preflight
from services.worker.process import WorkerNetConfig, WorkerThread

NAMESPACE = "tandem"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    role: str  # prefill | decode | both
    replicas: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ranks: int = 1  # the processes of a tensor-parallel worker (engine/parallel)
    head_groups: int = 1  # its KV cache's head groups (engine/transfer/heads.py)

    @property
    def torch_threads(self) -> int:
        """Torch gets the whole CPUs it was granted, and never fewer than one thread. Workers
        sharing CPUs (num_cpus < 1) get one each: n threads on fewer cores is the least
        oversubscription possible, and no worse than it sounds, as in a disaggregated
        cluster one pool mostly waits while the other computes. A tensor-parallel worker's
        ranks share its CPUs: this is a rank's."""
        return max(1, int(self.num_cpus) // self.ranks)


def assign_cores(specs: Sequence[PoolSpec], available: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Dedicated cores per worker name (`<role>-<n>`), in spawn order, when every worker
    gets whole CPUs of its own; {} when they share (pinning workers that share cores would
    only stop the OS from balancing them). Pinned, a worker's torch threads stay on its
    cores: no migrations, and no neighbour's threads landing on them."""
    if any(s.num_cpus < 1 or not float(s.num_cpus).is_integer() for s in specs):
        return {}
    cores = sorted(available)
    wanted = [(f"{s.role}-{i}", int(s.num_cpus)) for s in specs for i in range(s.replicas)]
    if sum(n for _, n in wanted) > len(cores):
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for name, n in wanted:
        out[name], cores = tuple(cores[:n]), cores[n:]
    return out


def reachable_from_other_nodes(net: WorkerNetConfig, node_ip: str) -> WorkerNetConfig:
    """Listen on every interface and register the node's address (a host given by hand
    wins): peers dial what the registry says, and 127.0.0.1 is another machine there."""
    if net.advertise_host is not None:
        return net
    return replace(net, host="0.0.0.0", advertise_host=node_ip)


def placement(specs: list[PoolSpec], cores: dict[str, tuple[int, ...]]) -> list[str]:
    """A line per pool: its workers and what each was given (the serve banner shows it)."""

    def pinned(s: PoolSpec) -> list[str]:
        sets = [cores[f"{s.role}-{i}"] for i in range(s.replicas) if f"{s.role}-{i}" in cores]
        if not sets:
            return ["cores shared"]
        return ["pinned to cores " + " | ".join(",".join(map(str, c)) for c in sets)]

    def each(n: float, unit: str) -> str:
        return f"{round(n, 2):g} {unit}{'' if n == 1 else 's'} each"

    def threads(s: PoolSpec) -> list[str]:
        if s.ranks == 1:
            shown = [each(s.torch_threads, "torch thread")]
        else:
            per_rank = f"{s.torch_threads} torch thread{'' if s.torch_threads == 1 else 's'}"
            shown = [f"{s.ranks} tensor-parallel ranks each", f"{per_rank} a rank"]
        groups = [f"KV in {s.head_groups} head groups"] if s.head_groups > 1 else []
        return shown + groups

    return [
        f"{s.role}: {s.replicas} worker{'' if s.replicas == 1 else 's'}, "
        + ", ".join(
            [each(s.num_cpus, "CPU"), *threads(s)]
            + ([each(s.num_gpus, "GPU")] if s.num_gpus else [])
            + pinned(s)
        )
        for s in specs
    ]


class WorkerActor:
    """Lives in its own Ray worker process; wraps a WorkerThread."""

    def __init__(
        self,
        config: WorkerConfig,
        net: WorkerNetConfig,
        cores: tuple[int, ...] = (),
        node_address: bool = False,
    ) -> None:
        """`node_address`: listen on every interface and register this node's address, so
        that the router and peers on other nodes of a multi-node Ray can dial it."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        run_preflight()  # RDMA asked of this node but UCX has only TCP: the actor fails here
        if node_address:
            net = reachable_from_other_nodes(net, ray.util.get_node_ip_address())
        if cores:  # before torch starts its threads: they inherit the process's affinity
            os.sched_setaffinity(0, cores)
        self._thread = WorkerThread(config, net)
        self._address = self._thread.start()

    def address(self) -> str:
        return self._address

    def stop(self, drain_s: float | None = None) -> None:
        """Leave the registry, finish what it holds within `drain_s` (process.py), stop."""
        self._thread.stop(drain_s)


@dataclass(slots=True)
class PoolMember:
    name: str
    role: str
    actor: Any  # ray.actor.ActorHandle
    address: str = ""


class Pools:
    """Start, look up and stop the worker actors of one Tandem cluster."""

    def __init__(
        self,
        engine: EngineConfig,
        net: WorkerNetConfig,
        node_address: bool = False,
        served_name: str = "",
    ) -> None:
        """`node_address`: workers register their node's address, not 127.0.0.1 (a Ray
        cluster that may span nodes); `served_name`: their metrics' model_name."""
        self.engine = engine
        self.served_name = served_name
        self.net = net
        self.node_address = node_address
        self.members: dict[str, PoolMember] = {}
        self._retiring: dict[str, tuple[PoolMember, Any]] = {}  # name -> (member, its stop)

    def start(
        self,
        specs: list[PoolSpec],
        cores: dict[str, tuple[int, ...]] | None = None,
        timeout_s: float = 600.0,
    ) -> list[PoolMember]:
        """Spawn every pool's workers (pinned to `cores[name]` where given) and wait until
        all are registered."""
        cores = cores or {}
        new = [
            self._spawn(spec, i, cores.get(f"{spec.role}-{i}", ()))
            for spec in specs
            for i in range(spec.replicas)
        ]
        self.members.update((m.name, m) for m in new)  # so that stop() reaches them all
        # Actors load their models in parallel; wait for all of them to be registered.
        addresses = ray.get([m.actor.address.remote() for m in new], timeout=timeout_s)
        for member, address in zip(new, addresses, strict=True):
            member.address = address
        return new

    def add(self, spec: PoolSpec) -> PoolMember:
        """One more worker of `spec.role`, not waited for: it shows in the registry when it
        has loaded its model. Named with the lowest index free in Ray's namespace."""
        taken = self.members.keys() | self._retiring.keys()
        index = next(i for i in range(len(taken) + 1) if f"{spec.role}-{i}" not in taken)
        member = self._spawn(spec, index, ())
        self.members[member.name] = member
        return member

    def retire(self, name: str, drain_s: float) -> None:
        """Take `name` out: it leaves the registry, finishes what it holds within `drain_s`
        and stops; `reap` ends its actor after."""
        member = self.members.pop(name)
        self._retiring[name] = (member, member.actor.stop.remote(drain_s))

    def reap(self) -> list[str]:
        """End the actors of retired workers that have stopped; their names."""
        done = []
        for name, (member, stopped) in list(self._retiring.items()):
            ready, _ = ray.wait([stopped], timeout=0)
            if ready:
                with contextlib.suppress(Exception):  # it failed: it is ended all the same
                    ray.get(stopped)
                ray.kill(member.actor)
                del self._retiring[name]
                done.append(name)
        return done

    def _spawn(self, spec: PoolSpec, index: int, cores: tuple[int, ...]) -> PoolMember:
        name = f"{spec.role}-{index}"
        engine = replace(
            self.engine,
            role=spec.role,  # type: ignore[arg-type]
            num_threads=spec.torch_threads,
            tensor_parallel_size=spec.ranks,
            cache=replace(self.engine.cache, kv_head_groups=spec.head_groups),
        )
        actor_cls = ray.remote(WorkerActor).options(
            name=name,
            namespace=NAMESPACE,
            num_cpus=spec.num_cpus,
            num_gpus=spec.num_gpus,
            max_concurrency=2,  # stop must get through while address() waits
        )
        config = WorkerConfig(name, engine, served_name=self.served_name)
        actor = actor_cls.remote(config, self.net, cores, self.node_address)
        return PoolMember(name, spec.role, actor)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Deregister and stop every worker, then end the actors."""
        members = list(self.members.values())
        refs = [m.actor.stop.remote() for m in members]
        # retiring workers are stopping already: their own stops are waited for instead
        members += [m for m, _ in self._retiring.values()]
        refs += [stopped for _, stopped in self._retiring.values()]
        self.members.clear()
        self._retiring.clear()
        try:
            ray.get(refs, timeout=timeout_s)
        except Exception as e:  # stop what we can; the kill below ends the rest
            log.warning("stopping workers cleanly failed: %s", e)
        for m in members:
            ray.kill(m.actor)
