"""The soak's cluster: Redis, mock workers and a router as processes, each one's memory
tracked from its start to its end (or its kill)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.soak.config import SoakConfig
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.redis_server import RedisServer
from services.pb import worker_pb2, worker_pb2_grpc

TIMING = "step_ms=1,prefill_ms_per_token=0.05,decode_ms=20"


# ---- processes ---------------------------------------------------------------------------
def rss_kb(pid: int) -> int | None:
    """VmRSS of a live process, in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass(slots=True)
class Tracked:
    """One process (one incarnation of a worker) and its memory at start and end."""

    name: str
    pid: int
    rss_start_kb: int | None
    rss_end_kb: int | None = None
    killed: bool = False

    @classmethod
    def of(cls, name: str, pid: int) -> Tracked:
        return cls(name, pid, rss_kb(pid))

    def end(self) -> None:
        self.rss_end_kb = rss_kb(self.pid)


@dataclass(slots=True)
class Cluster:
    config: SoakConfig
    logs: Path
    model: Path
    redis: RedisServer
    workers: dict[str, Proc] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    tracked: list[Tracked] = field(default_factory=list)
    router: Proc | None = None
    url: str = ""

    def start_worker(self, worker_id: str, incarnation: int = 0) -> None:
        logs = self.logs / f"run{incarnation}"
        logs.mkdir(parents=True, exist_ok=True)
        proc, address = start_worker(
            logs,
            worker_id,
            worker_id.split("-")[0],
            self.redis.url,
            self.model,
            "--engine=mock",
            f"--mock-timing={TIMING}",
            f"--max-num-seqs={self.config.max_num_seqs}",
        )
        self.workers[worker_id], self.addresses[worker_id] = proc, address
        self.tracked.append(Tracked.of(worker_id, proc.proc.pid))

    def start(self) -> None:
        c = self.config
        ids = [f"prefill-{i}" for i in range(c.prefill_workers)]
        ids += [f"decode-{i}" for i in range(c.decode_workers)]
        for worker_id in ids:
            self.start_worker(worker_id)
        self.router, self.url = start_router(
            self.logs / "router.log",
            self.redis.url,
            f"--model={self.model}",
            "--local-prefill-tokens=0",  # every prompt to the prefill pool: kills hit it
            "--no-prefill-balance",
        )
        self.tracked.append(Tracked.of("router", self.router.proc.pid))
        self.tracked.append(Tracked.of("redis", self.redis.pid))

    def kill(self, worker_id: str) -> None:
        proc = self.workers[worker_id]
        entry = next(t for t in reversed(self.tracked) if t.pid == proc.proc.pid)
        entry.end()
        entry.killed = True
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.stop()  # reaps it

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop(signal.SIGINT)
        for proc in self.workers.values():
            proc.stop(signal.SIGTERM)

    def pools(self) -> dict[str, dict[str, Any]]:
        """Each worker's block pool once the load is over (its Stats rpc audits it)."""
        out: dict[str, dict[str, Any]] = {}
        for worker_id, address in self.addresses.items():
            try:
                with grpc.insecure_channel(address) as channel:
                    stub = worker_pb2_grpc.WorkerStub(channel)
                    s = stub.Stats(worker_pb2.StatsRequest(), timeout=10)
            except grpc.RpcError as e:  # a worker that broke: that is a finding too
                out[worker_id] = {"error": f"{e.code().name}: {e.details()}"}
                continue
            out[worker_id] = {
                "idle": s.idle,
                "leases": s.leases,
                "held_blocks": s.held_blocks,
                "integrity_error": s.integrity_error,
            }
        return out
