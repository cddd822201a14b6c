"""A private Redis server on a free 127.0.0.1 port, started and stopped by us (by pid).

`tandem serve` starts one unless --redis-url is given; tests start one per session.
Persistence is off: the registry and KV index are rebuilt from live workers.

It has a password (a new one unless given): on a shared machine every local user can reach
127.0.0.1, and whoever writes the registry could otherwise send workers' traffic anywhere.
The configuration goes in on stdin (`redis-server -`), not on the command line, which
every user of the machine can read; `url` carries the password, so it is a secret too
(redis_url.py: how it is passed on and shown).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

import redis

from services.cluster.redis_url import new_password, url_with_password


class RedisServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(port: int, password: str) -> str:
    # Characters Redis's config parser would take for something else are refused, not
    # escaped: a password is ours (token_urlsafe) or a user's, who can pick another.
    if not password or any(c.isspace() or c in "\"'\\" for c in password):
        raise ValueError("a Redis password needs no spaces, quotes or backslashes")
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            'save ""',
            "appendonly no",
            f'requirepass "{password}"',
            "",
        ]
    )


class RedisServer:
    def __init__(
        self, port: int | None = None, start_timeout_s: float = 10.0, password: str | None = None
    ) -> None:
        """`password`: a new one when None (a restart on the same port passes the old)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed (make install installs it)")
        self.port = port or free_port()
        self.password = password or new_password()
        self.url = url_with_password(f"redis://127.0.0.1:{self.port}/0", self.password)
        config = _config(self.port, self.password)
        self._proc = subprocess.Popen(
            [binary, "-"],  # "-": the configuration comes on stdin
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stdin is not None
        with self._proc.stdin:
            self._proc.stdin.write(config.encode())
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {err}")
            try:
                if redis.Redis(port=self.port, password=self.password, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:  # not listening yet, or still loading
                pass
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
