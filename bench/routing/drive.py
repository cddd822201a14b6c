"""Send a workload to a router and measure it: loadtest's client for each request, the
router's /metrics before and after for the hit rate and where prompts went.

    conversation c:  sleep until c.at -> turn 1 -> think -> turn 2 -> ...   (one task each)
    every request:   a streaming /v1/completions with the prompt as token ids,
                     max_tokens = min_tokens = output_len (ignore_eos)

Bounded: each request by `request_timeout_s`, the whole run by `max_duration_s` (what is
still running then is cancelled and counted as `cancelled`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.routing.workloads import Conversation, Workload
from loadtest.body import BodyMaker
from loadtest.client import Client, make_http
from loadtest.datasets.base import TokenizerLike
from loadtest.prometheus import Series, scrape, tandem_summary
from loadtest.records import RequestOutput
from loadtest.stats import Stats

ROUTED = "tandem_routed_requests_total"
ROUTED_CACHED = "tandem_routed_cached_blocks_total"


@dataclass(frozen=True, slots=True)
class Limits:
    request_timeout_s: float = 120.0
    max_duration_s: float = 600.0


async def drive(
    url: str, workload: Workload, tokenizer: TokenizerLike, limits: Limits, prefill_workers: int
) -> dict[str, Any]:
    async with make_http(limits.request_timeout_s) as http:
        client = Client(http, url, {}, limits.request_timeout_s)
        model = await _model(http, url)
        bodies = BodyMaker(
            "completions", model, tokenizer, ignore_eos=True, temperature=0.0, extra_body={}
        )
        before = await scrape(http, url, {})
        outputs: list[RequestOutput] = []
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(_converse(c, t0, client, bodies, outputs))
            for c in workload.conversations
        ]
        _, pending = await asyncio.wait(tasks, timeout=limits.max_duration_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        duration = time.perf_counter() - t0
        after = await scrape(http, url, {})
    if before is None or after is None:
        raise RuntimeError(f"{url}/metrics did not answer")
    return figures(workload, outputs, duration, before, after, prefill_workers)


async def _converse(
    c: Conversation, t0: float, client: Client, bodies: BodyMaker, outputs: list[RequestOutput]
) -> None:
    await asyncio.sleep(max(0.0, t0 + c.at - time.perf_counter()))
    for turn in c.turns:
        await asyncio.sleep(turn.think_s)
        body = bodies.single(turn.prompt, turn.output_len)
        out = await client.send(bodies.path, body, "routing", len(turn.prompt))
        outputs.append(out)
        if not out.success:
            return  # the rest of a broken conversation would not be the same test


async def _model(http: Any, url: str) -> str:
    r = await http.get(url + "/v1/models", timeout=10.0)
    return str(r.json()["data"][0]["id"])


def figures(
    workload: Workload,
    outputs: list[RequestOutput],
    duration: float,
    before: dict[Series, float],
    after: dict[Series, float],
    prefill_workers: int,
) -> dict[str, Any]:
    ok = [o for o in outputs if o.success]
    ttft = Stats.of_seconds([o.ttft for o in ok])
    server = tandem_summary(before, after)
    loads = routed_by_worker(before, after, "prefill")
    for i in range(prefill_workers):  # a worker never picked has no series at all
        loads.setdefault(f"prefill-{i}", 0.0)
    return {
        "requests": workload.num_requests,
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "cancelled": workload.num_requests - len(outputs),  # cut off, or after a failure
        "errors": sorted({o.error for o in outputs if not o.success})[:5],
        "duration_s": duration,
        "hit_rate": server["prefix_cache_hit_rate"],
        "prompt_tokens": server["prompt_tokens"],
        "cached_prompt_tokens": server["cached_prompt_tokens"],
        "ttft_mean_ms": ttft.mean,
        "ttft_p50_ms": ttft.median,
        "ttft_p99_ms": ttft.p99,
        "max_load_ratio": load_ratio(loads),
        "prefill_requests_by_worker": dict(sorted(loads.items())),
        "requests_by_route": server["requests_by_route"],
        # What the router's KV index said the chosen prefill workers held: next to the
        # hits, whether misses were choices (the index knew) or a stale index.
        "routed_cached_blocks": _delta(before, after, ROUTED_CACHED, pool="prefill"),
    }


def routed_by_worker(
    before: dict[Series, float], after: dict[Series, float], pool: str
) -> dict[str, float]:
    """Prompts the router sent to each worker of `pool` between the two scrapes."""
    out: dict[str, float] = {}
    for (name, labels), value in after.items():
        tags = dict(labels)
        if name == ROUTED and tags.get("pool") == pool:
            out[tags["worker"]] = value - before.get((name, labels), 0.0)
    return out


def _delta(
    before: dict[Series, float], after: dict[Series, float], name: str, **labels: str
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def load_ratio(loads: dict[str, float]) -> float | None:
    """The busiest worker's share over the mean (1.0: perfectly even)."""
    if not loads or sum(loads.values()) == 0:
        return None
    mean = sum(loads.values()) / len(loads)
    return max(loads.values()) / mean
