"""`tandem serve` and `tandem worker` as child processes, started as a user would and
stopped by pid (and their process group: we started it). The end-to-end tests and the
benchmarks that need whole clusters use these.

Secrets (the Redis URL with its password, the cluster token) reach the children through
their environment, never their command line (redis_url.py, cluster_token.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.cluster.redis_url import (
    REDIS_PASSWORD_ENV,
    REDIS_URL_ENV,
    new_password,
    url_with_password,
)

# The last line `tandem serve` and `tandem router` print once they answer requests.
READY = "Ctrl-C stops everything"
API_LINE = "OpenAI API:"


class Proc:
    """A child process whose output is kept (for failure messages) and scanned for a line."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: Ray's children go with it on stop
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()

    def wait_for(self, marker: str, timeout_s: float) -> str:
        """The first output line containing `marker`; fails if the process dies first."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if marker in line:
                    return line
            seen = len(self.lines)
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"no {marker!r} within {timeout_s} s:\n{self.tail()}")

    def wait_or_stop(self, marker: str, timeout_s: float) -> str:
        """`wait_for`; a process that does not get there (or an interrupted wait) is
        stopped before the error goes on."""
        try:
            return self.wait_for(marker, timeout_s)
        except BaseException:
            self.stop()
            raise

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        """Ask it to stop (as Ctrl-C would); kill its group if it does not."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode


def start_worker(
    tmp: Path,
    worker_id: str,
    role: str,
    redis_url: str,
    model: Path,
    *extra: str,
    timeout_s: float = 240.0,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """A `tandem worker` process; returns it and its gRPC address once it is registered."""
    args = [
        "worker",
        f"--worker-id={worker_id}",
        f"--role={role}",
        f"--model={model}",
        "--dtype=float32",
        "--threads=1",
        "--kv-cache-gb=0.05",
        *extra,
    ]
    proc = Proc(args, tmp / f"{worker_id}.log", {**(env or {}), REDIS_URL_ENV: redis_url})
    line = proc.wait_for("serving on", timeout_s)
    return proc, line.rsplit(" ", 1)[-1].strip()


@dataclass
class Served:
    """A running `tandem serve`: its router URL and the Redis / Ray it started
    (`redis_url` with its password: the banner shows it masked)."""

    proc: Proc
    url: str
    redis_url: str
    ray_address: str


def start_serve(
    log_path: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 600.0
) -> Served:
    """`tandem serve ARGS --port 0` (it binds a free port before its cluster starts);
    returns once the router answers. Its Redis gets a password chosen here (unless `env`
    names one), so that this side can use it too."""
    env = {REDIS_PASSWORD_ENV: new_password(), **(env or {})}
    proc = Proc(["serve", "--port=0", *args], log_path, env)
    proc.wait_or_stop(READY, timeout_s)
    field = {k: proc.wait_for(k, 1).split(k, 1)[1].strip() for k in ("Ray address:", "Redis:")}
    redis_url = url_with_password(field["Redis:"], env[REDIS_PASSWORD_ENV])
    return Served(proc, api_base(proc), redis_url, field["Ray address:"])


def start_router(
    log_path: Path,
    redis_url: str,
    *args: str,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """`tandem router --port 0` (one more router for a running cluster, on a port it
    binds itself); returns it and its URL."""
    env = {**(env or {}), REDIS_URL_ENV: redis_url}
    proc = Proc(["router", "--port=0", *args], log_path, env)
    proc.wait_or_stop(READY, timeout_s)
    return proc, api_base(proc)


def api_base(proc: Proc) -> str:
    """http://127.0.0.1:PORT from the banner's `OpenAI API: http://HOST:PORT/v1` line."""
    url = proc.wait_for(API_LINE, 1).split(API_LINE, 1)[1].strip()
    port = int(url.removesuffix("/v1").rsplit(":", 1)[1])
    return f"http://127.0.0.1:{port}"
