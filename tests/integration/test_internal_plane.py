"""The internal plane as real processes: a Redis with a password, a mock worker and a
router given the cluster token through their environment, and forged registry records
written straight into Redis by someone who can reach it but holds no token.

    redis-server (password on stdin) ── both-0 (tandem worker --engine mock)
                                     └─ tandem router --mode colocated
    + tandem:worker:forged-*  ->  a TCP listener of ours that counts who dials it

A forged record is skipped by every reader (the router never dials its address, not even
for a health check, and every request succeeds); no secret is on any command line or in
any log. The pure parts (redaction, signatures, banner): tests/unit/test_internal_plane.py.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.prometheus import parse_metrics
from services.cluster.cluster_token import TOKEN_ENV, new_token
from services.cluster.launch import Proc, start_router, start_worker
from services.cluster.record_signing import sign, signing_key
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
REJECTION_LINE = "registry records not signed with this cluster's token"
ROUTED = "tandem_routed_requests_total"


class Listener:
    """A TCP port that accepts and counts connections: where forged records point. Any
    dial (a health check, a gRPC call) is one connection."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)  # the loop below looks at `_stop` this often
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.dials = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.dials += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _forged(worker_id: str, address: str) -> bytes:
    """As attractive a worker as can be: both roles, idle, the same model."""
    record = WorkerRecord(
        worker_id=worker_id,
        role="both",
        grpc_address=address,
        model=MODEL,
        block_size=16,
        num_blocks=4096,
        max_model_len=8192,
        max_num_seqs=64,
        nixl_agent=worker_id,
        nixl_metadata=b"not an agent",
        started_at_unix_ms=int(time.time() * 1000),
        heartbeat_unix_ms=int(time.time() * 1000),
    )
    return record.SerializeToString()


def _forge(client: redis.Redis, address: str) -> list[str]:
    """Records by someone without the token: bare, signed with a guessed key, and signed
    with no key (what a worker without a token writes). Returns their worker ids."""
    forged = {
        "forged-bare": lambda b: b,
        "forged-guessed-key": lambda b: sign(b"guess", b),
        "forged-no-key": lambda b: sign(signing_key(None), b),
    }
    for worker_id, wrap in forged.items():
        client.set(f"tandem:worker:{worker_id}", wrap(_forged(worker_id, address)), px=600_000)
    return list(forged)


@dataclass
class Plane:
    redis: RedisServer
    token: str
    worker: Proc
    router: Proc
    url: str
    listener: Listener
    forged: list[str]

    def secrets(self) -> list[bytes]:
        return [s.encode() for s in (self.redis.password, self.token, self.redis.url)]

    def processes(self) -> dict[str, int]:
        return {
            "redis-server": self.redis.pid,
            "worker": self.worker.proc.pid,
            "router": self.router.proc.pid,
        }


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("plane")
    token = new_token()
    env = {TOKEN_ENV: token}
    listener = Listener()
    with RedisServer() as server:
        forged = _forge(redis.Redis.from_url(server.url), listener.address)
        worker, _ = start_worker(
            tmp, "both-0", "both", server.url, smollm_path, "--engine=mock", env=env
        )
        try:
            router, url = start_router(
                tmp / "router.log",
                server.url,
                f"--model={smollm_path}",
                "--mode=colocated",
                env=env,
            )
            try:
                yield Plane(server, token, worker, router, url, listener, forged)
            finally:
                router.stop(signal.SIGTERM)
        finally:
            worker.stop(signal.SIGTERM)
            listener.close()


def test_the_registry_skips_forged_records_and_counts_them(plane: Plane) -> None:
    rejected: list[int] = []
    registry = Registry(
        redis.Redis.from_url(plane.redis.url),
        token=plane.token,
        on_rejected=lambda: rejected.append(1),
    )
    assert [r.worker_id for r in registry.workers()] == ["both-0"]
    assert len(rejected) == len(plane.forged)
    for worker_id in plane.forged:
        assert registry.get(worker_id) is None
    assert registry.get("both-0") is not None
    # Without the token, the real worker's record is refused too: it proves a token.
    assert Registry(redis.Redis.from_url(plane.redis.url)).get("both-0") is None


def test_the_router_never_calls_a_forged_worker(plane: Plane) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
    for i in range(8):
        r = httpx.post(f"{plane.url}/v1/completions", json={**body, "seed": i}, timeout=60)
        assert r.status_code == 200, r.text
    time.sleep(2.5)  # more than two rounds of health checks (1 s) and registry reads (0.5 s)
    assert plane.listener.dials == 0, plane.router.tail()
    samples = parse_metrics(httpx.get(f"{plane.url}/metrics", timeout=10).text)
    routed = {dict(ls)["worker"] for (n, ls), v in samples.items() if n == ROUTED and v}
    assert routed == {"both-0"}
    rejected = sum(v for (n, _), v in samples.items() if n == "tandem_registry_rejected_total")
    assert rejected >= 2 * len(plane.forged)  # at start, and at every registry read since
    log = plane.router.log_path.read_text()
    for worker_id in plane.forged:
        assert f"worker {worker_id}" not in log  # what the router says of each it adds
    # Read every 0.5 s, reported once: the rate limit holds the rest back.
    assert log.count(REJECTION_LINE) == 1, log


def _descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them (Ray-free here, so a shallow tree)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found = set(roots)
    for _ in range(8):  # bounded depth
        found |= {pid for pid, ppid in parents.items() if ppid in found}
    return found


def test_no_secret_on_a_command_line_or_in_a_log(plane: Plane) -> None:
    pids = _descendants(set(plane.processes().values()))
    assert len(pids) >= 3
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for secret in plane.secrets():
            assert secret not in cmdline, (pid, cmdline)
    for log in (plane.worker.log_path, plane.router.log_path):
        text = log.read_bytes()
        assert text, log
        for secret in plane.secrets():
            assert secret not in text, log
