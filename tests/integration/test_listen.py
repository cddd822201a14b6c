"""The router's port: `tandem serve` binds it before its cluster starts, so a port that is
taken fails at once, saying which (not after Ray, Redis and the workers are up), and
`--port 0` serves on a free one that the banner names. Real processes on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services.cluster.launch import Proc

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", ["serve", "router"])
def test_a_taken_port_is_refused_at_once_and_named(
    tmp_path: Path, smollm_path: Path, command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        args = [command, f"--model={smollm_path}", f"--port={port}"]
        proc = Proc(
            args + (["--no-dashboard"] if command == "serve" else []),
            tmp_path / f"{command}.log",
            # the router alone would need a Redis first: an unreachable one is never dialled
            {"TANDEM_REDIS_URL": "redis://127.0.0.1:1"},
        )
        try:
            code = proc.proc.wait(60)
        finally:
            proc.stop()
        assert code != 0
        assert f"cannot listen on 127.0.0.1:{port}" in proc.tail()
        assert "Ray address:" not in proc.tail()  # nothing was started first
        assert time.monotonic() - started < 30
