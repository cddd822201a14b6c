"""`tandem autoscale --dry-run` against a real Redis holding signed worker records: it
prints what it would do and does nothing; a forged record is not counted."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from services.cluster.cluster_token import TOKEN_ENV
from services.cluster.redis_url import REDIS_URL_ENV
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord

TOKEN = "autoscale-cli-token"


def _autoscale(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, REDIS_URL_ENV: redis_url, TOKEN_ENV: TOKEN}
    cmd = [sys.executable, "-m", "services.cli", "autoscale", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_decisions_and_changes_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ours = Registry(client, prefix="tandem", token=TOKEN)
    for wid, role in (("prefill-0", "prefill"), ("decode-0", "decode"), ("decode-1", "decode")):
        ours.heartbeat(WorkerRecord(worker_id=wid, role=role, num_blocks=64, max_num_seqs=8))
    forged = Registry(client, prefix="tandem", token="not-the-cluster-token")
    forged.heartbeat(WorkerRecord(worker_id="prefill-9", role="prefill", num_blocks=64))
    try:
        got = _autoscale(
            redis_url,
            "--dry-run",
            "--ticks=8",
            "--autoscale-interval-s=0.2",
            "--stable-window-s=0.5",
            "--panic-window-s=0.2",
            "--down-cooldown-s=0",
        )
        assert got.returncode == 0, got.stderr
        lines = got.stdout.splitlines()
        assert len(lines) == 16  # a line per pool per tick
        # idle: holds for a whole stable window, then each pool to its floor
        assert "prefill 1 -> 1 (ready 1): hold: not watched for a whole stable window" in lines[0]
        assert any("prefill 1 -> 0 (ready 1): down: no load" in x for x in lines)
        assert any("decode  2 -> 1 (ready 2): down: no load" in x for x in lines)
        # nothing was done: the same workers are registered
        assert sorted(r.worker_id for r in ours.workers()) == ["decode-0", "decode-1", "prefill-0"]
    finally:
        for wid in ("prefill-0", "decode-0", "decode-1", "prefill-9"):
            ours.remove(wid)


def test_without_dry_run_it_says_what_acts(redis_url: str) -> None:
    got = _autoscale(redis_url, "--ticks=1")
    assert got.returncode == 2 and "tandem serve --autoscale" in got.stderr
    got = _autoscale(redis_url, "--dry-run", "--decode-replicas=3:1")
    assert got.returncode == 2 and "min <= max" in got.stderr
