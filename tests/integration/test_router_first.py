"""A router started before any worker registers (a cluster scaled to zero, a router pod
restarted while its workers were gone): with `--max-model-len` it starts, holds a request
while no worker is there, and serves it once a worker registers; without the flag it
refuses at once, saying what to pass. Real processes: Redis, `tandem router`, a mock
`tandem worker`."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from loadtest.prometheus import parse_metrics
from services.cluster.launch import API_LINE, Proc, api_base, start_router, start_worker
from services.cluster.redis_server import RedisServer

pytestmark = pytest.mark.slow


def _until_held(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        if any(n == "tandem_requests_held" and v >= 1 for (n, _), v in samples.items()):
            return
        time.sleep(0.2)
    raise AssertionError("the request was not held")


def test_a_router_started_before_its_workers_serves_once_one_registers(
    tmp_path: Path, smollm_path: Path
) -> None:
    with RedisServer() as redis:
        router, url = start_router(
            tmp_path / "router.log",
            redis.url,
            f"--model={smollm_path}",
            "--mode=colocated",
            "--max-model-len=2048",
            "--hold-for-worker-s=60",
        )
        try:
            answers: list[httpx.Response] = []
            body = {"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 4}
            sender = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(f"{url}/v1/completions", json=body, timeout=90)
                )
            )
            sender.start()
            _until_held(url, timeout_s=30)
            worker, _ = start_worker(
                tmp_path, "both-0", "both", redis.url, smollm_path, "--engine=mock"
            )
            try:
                sender.join(90)
                assert not sender.is_alive(), "the held request was never answered"
                assert answers[0].status_code == 200, answers[0].text
                assert answers[0].json()["usage"]["completion_tokens"] == 4
                # the flag bounds what it accepts, as workers' lengths would
                too_long = {**body, "prompt": [1000] * 2048}
                refused = httpx.post(f"{url}/v1/completions", json=too_long, timeout=30)
                assert refused.status_code == 400, refused.text
            finally:
                worker.stop(signal.SIGTERM)
        finally:
            assert router.stop(signal.SIGTERM) == 0, router.tail()


def test_without_workers_or_a_length_the_router_refuses_to_start(
    tmp_path: Path, smollm_path: Path
) -> None:
    with RedisServer() as redis:
        router = Proc(
            ["router", f"--model={smollm_path}", "--port=0"],
            tmp_path / "router.log",
            {"TANDEM_REDIS_URL": redis.url},
        )
        code = router.proc.wait(60)
        router.stop()
        assert code != 0
        assert "--max-model-len starts the router without them" in router.tail()


def test_with_a_wait_the_router_starts_once_its_first_worker_registers(
    tmp_path: Path, smollm_path: Path
) -> None:
    """`--wait-for-workers-s` (the Helm chart's router): no length given and no worker yet,
    the router waits for one instead of exiting (a pod would crash-loop meanwhile), then
    serves at the length the worker registered."""
    with RedisServer() as redis:
        router = Proc(
            ["router", f"--model={smollm_path}", "--port=0", "--mode=colocated"]
            + ["--wait-for-workers-s=120"],
            tmp_path / "router.log",
            {"TANDEM_REDIS_URL": redis.url},
        )
        try:
            router.wait_or_stop("waiting up to 120 s for a worker", 60)
            time.sleep(1.0)
            assert router.proc.poll() is None  # still waiting, not exited
            worker, _ = start_worker(
                tmp_path, "both-0", "both", redis.url, smollm_path, "--engine=mock"
            )
            try:
                router.wait_or_stop(API_LINE, 90)
                url = api_base(router)
                body = {"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 3}
                r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 3
            finally:
                worker.stop(signal.SIGTERM)
        finally:
            assert router.stop(signal.SIGTERM) == 0, router.tail()
