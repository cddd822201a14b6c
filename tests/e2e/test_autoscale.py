"""`tandem serve --autoscale` on mock workers (real Ray actors, Redis, NIXL and HTTP): the
prefill pool goes to zero with no load and comes back for prompt work, the decode pool
grows for a decode-heavy load and shrinks after, a scale-down in the middle of 8 streams
completes all 8, and a whole cluster at zero is woken by the requests it holds. Windows
are seconds here (minutes in production) so that the tests run in about two minutes;
every wait is bounded."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.prometheus import parse_metrics
from services.cluster import launch
from services.cluster.cluster_token import TOKEN_ENV
from services.cluster.registry import Registry
from tests.e2e.conftest import API_KEY, CLUSTER_TOKEN, Served

pytestmark = pytest.mark.slow

# decode step: 22 ms + 2 ms a sequence (1 worker: 24 streams at 70 ms, over the 60 ms
# target; 2 workers: 46 ms); prompts at 2,000 tokens/s a worker
TIMING = "decode_ms=20,decode_ms_per_seq=2,prefill_ms_per_token=0.5"
STABLE_S = 4.0


def _serve_autoscaled(log: Path, *flags: str) -> Served:
    s = launch.start_serve(
        log,
        f"--api-key={API_KEY}",
        "--no-dashboard",
        "--engine=mock",
        f"--mock-timing={TIMING}",
        "--cpus-per-worker=0.1",
        "--local-prefill-tokens=0",  # every prompt is prefill work
        "--no-prefill-balance",
        "--autoscale",
        "--autoscale-interval-s=0.5",
        "--panic-window-s=1",
        f"--stable-window-s={STABLE_S}",
        "--up-cooldown-s=1",
        f"--down-cooldown-s={STABLE_S}",
        "--ready-timeout-s=60",
        "--scale-down-drain-s=30",
        *flags,
        env={TOKEN_ENV: CLUSTER_TOKEN},
    )
    return Served(s.proc, s.url, s.redis_url, s.ray_address)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = _serve_autoscaled(
        tmp_path_factory.mktemp("autoscale") / "serve.log",
        "--prefill-replicas=0:2",
        "--decode-replicas=1:3",
        "--itl-target-ms=60",
        "--ttft-target-s=1",
    )
    yield served
    assert served.proc.stop() == 0, served.proc.tail()


class Load:
    """`threads` clients, each sending `each` requests one after another, in the background;
    every answer's status and token count kept."""

    def __init__(self, c: Served, prompt_len: int, max_tokens: int, threads: int, each: int):
        self.answers: list[tuple[int, int]] = []
        with c.client() as http:
            self.model = http.get("/v1/models").json()["data"][0]["id"]
        body = {
            "model": self.model,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        def client(k: int) -> None:
            with c.client() as http:
                for i in range(each):
                    prompt = [1000 + 97 * k + i] * prompt_len  # no two alike: no cache hits
                    self.answers.append(_stream(http, {**body, "prompt": prompt}))

        self._threads = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def finished(self) -> int:
        return len(self.answers)

    def join(self, timeout_s: float = 120.0) -> list[tuple[int, int]]:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        assert not any(t.is_alive() for t in self._threads), "the load did not finish in time"
        return self.answers


def _stream(http: httpx.Client, body: dict[str, object]) -> tuple[int, int]:
    """The status, and the tokens the final usage chunk counts (0 when there is none)."""
    tokens = 0
    with http.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                tokens = usage["completion_tokens"]
    return r.status_code, tokens


def _pools(c: Served) -> dict[str, int]:
    records = Registry(redis.Redis.from_url(c.redis_url), token=CLUSTER_TOKEN).workers()
    return {pool: sum(r.role == pool for r in records) for pool in ("prefill", "decode")}


def _router_pools(c: Served) -> dict[str, int]:
    """Workers per pool in the registry and in the router's view (its per-worker series):
    the greater of the two."""
    with c.client() as http:
        samples = parse_metrics(http.get("/metrics").text)
    seen = [dict(ls).get("worker", "") for (n, ls) in samples if n == "tandem_kv_blocks_total"]
    registered = _pools(c)
    return {p: max(registered[p], sum(w.startswith(f"{p}-") for w in seen)) for p in registered}


def _p90_lengths(c: Served) -> tuple[int, int]:
    records = Registry(redis.Redis.from_url(c.redis_url), token=CLUSTER_TOKEN).workers("decode")
    return max((r.prompt_tokens_p90, r.output_tokens_p90) for r in records)


def _running_output_p90(c: Served) -> int:
    records = Registry(redis.Redis.from_url(c.redis_url), token=CLUSTER_TOKEN).workers("decode")
    return max((r.running_output_tokens_p90 for r in records), default=0)


def _until(ok: Callable[[], bool], what: str, timeout_s: float) -> float:
    start = time.monotonic()
    while not ok():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.25)
    return time.monotonic() - start


def _signal(served: Served, name: str) -> float:
    """The autoscaler's tandem_autoscaler_signal{name} (NaN: not exported)."""
    with served.client() as c:
        samples = parse_metrics(c.get("/metrics").text)
    want = ("name", name)
    got = [v for (n, ls), v in samples.items() if n == "tandem_autoscaler_signal" and want in ls]
    return got[0] if got else math.nan


def test_each_pool_follows_its_own_load(scaled: Served) -> None:
    # no load: the prefill pool goes to its floor of zero; prompts are prefilled on the
    # decode worker meanwhile, counted as their own route
    # (and the router to see it: until its next registry read it still sends prompts there)
    _until(lambda: _router_pools(scaled)["prefill"] == 0, "the prefill pool to go to zero", 20)
    trickle = Load(scaled, prompt_len=40, max_tokens=8, threads=1, each=3)
    assert trickle.join() == [(200, 8)] * 3
    assert scaled.metric("tandem_requests_total", route="local_prefill_no_pool") >= 3
    # what it served rides on its heartbeats: the sizing keeps room for a p90 request
    _until(lambda: _p90_lengths(scaled) == (40, 8), "the decode worker's p90 lengths", 10)

    # decode-heavy: 24 streams are over the ITL target on one decode worker
    heavy = Load(scaled, prompt_len=40, max_tokens=150, threads=24, each=1)
    # while they run, the heartbeats say how long their answers are already (the p90 of
    # finished ones still says 8)
    _until(lambda: _running_output_p90(scaled) > 8, "the running answers' lengths", 20)
    _until(lambda: _pools(scaled)["decode"] >= 2, "the decode pool to grow", 30)
    assert heavy.join() == [(200, 150)] * 24

    # prompt-heavy: 1,500-token prompts back to back bring a prefill worker back
    prompts = Load(scaled, prompt_len=1500, max_tokens=4, threads=4, each=12)
    _until(lambda: _pools(scaled)["prefill"] >= 1, "a prefill worker to come back", 30)
    # the router's counts reach the autoscaler through Redis: its forecast sees the prompts
    _until(lambda: _signal(scaled, "forecast_prefill_tok_s") > 0, "a prompt forecast", 15)
    # and the outputs they ask for (max_tokens 4), which bound how long they live
    _until(lambda: _signal(scaled, "arrival_asked_output_tokens") == 4, "the asks counted", 15)
    answers = prompts.join()
    assert answers == [(200, 4)] * 48

    # the load is gone: both pools go back to their floors
    _until(lambda: _pools(scaled) == {"prefill": 0, "decode": 1}, "the floors", 60)
    assert scaled.metric("tandem_autoscaler_decisions_total", direction="down") >= 2


def test_a_scale_down_in_the_middle_of_8_streams_completes_all_8(scaled: Served) -> None:
    heavy = Load(scaled, prompt_len=40, max_tokens=100, threads=24, each=1)
    _until(lambda: _pools(scaled)["decode"] >= 2, "the decode pool to grow", 30)
    heavy.join()
    downs = scaled.metric("tandem_autoscaler_decisions_total", pool="decode", direction="down")
    # 8 streams fit one decode worker (36 ms a step): the pool shrinks while they run, once
    # their arrivals have left the stable window, with its forecast of 800-token answers
    # (every answer so far ran to its max_tokens: the asks are its length): ~5-10 s
    eight = Load(scaled, prompt_len=40, max_tokens=800, threads=8, each=1)
    _until(
        lambda: (
            scaled.metric("tandem_autoscaler_decisions_total", pool="decode", direction="down")
            > downs
        ),
        "a scale-down while the streams run",
        40,
    )
    assert eight.finished == 0, "the scale-down came after a stream had ended"
    assert eight.join() == [(200, 800)] * 8
    # a decode worker was retired while they ran, the least busy by its last heartbeat (a
    # worker stopped with streams on it finishes them first: test_faults.py's SIGTERM test)
    retired = re.findall(r"retiring decode-\d+ \((\d+) in flight", "".join(scaled.proc.lines))
    assert retired, "no decode worker was retired"


def test_the_whole_cluster_goes_to_zero_and_held_requests_bring_it_back(tmp_path: Path) -> None:
    served = _serve_autoscaled(
        tmp_path / "serve.log",
        "--prefill-replicas=0:1",
        "--decode-replicas=0:1",
        "--hold-for-worker-s=60",
    )
    try:
        # the router's own view too: a retired worker serves for 1 s after it leaves the
        # registry, and requests sent before the router's next read would still reach it
        _until(lambda: _router_pools(served) == {"prefill": 0, "decode": 0}, "zero workers", 30)
        with served.client() as http:
            assert http.get("/ready").status_code == 200  # it holds: a balancer keeps it
        # three requests arrive at an empty cluster: held while a decode worker starts,
        # then served whole (the prompts prefilled on it: the prefill pool stays at zero)
        held = Load(served, prompt_len=40, max_tokens=16, threads=3, each=1)
        assert held.join(timeout_s=90) == [(200, 16)] * 3
        assert served.metric("tandem_autoscaler_decisions_total", pool="decode", direction="up")
        assert served.metric("tandem_requests_held") == 0
        assert "request(s) held with no worker" in "".join(served.proc.lines)
        # and with no load it goes back to zero
        _until(lambda: _pools(served)["decode"] == 0, "zero workers again", 30)
    finally:
        assert served.proc.stop() == 0, served.proc.tail()
