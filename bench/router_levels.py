"""bench.router's levels: closed-loop senders of streamed /v1/completions requests (64
random prompt token ids and exactly 8 output tokens unless a level says otherwise), each
sender with a connection of its own, and a level's figures: TTFT, req/s, and the CPU
milliseconds per request of each process named, from their /proc counters before and
after (bench/proc_cpu.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from bench.proc_cpu import cpu_ms_per_request, read_cpu_ticks, ticks_per_second
from loadtest.body import BodyMaker
from loadtest.client import Client, make_http
from loadtest.records import RequestOutput
from loadtest.stats import Stats

PROMPT_LEN = 64
OUTPUT_LEN = 8
WARMUP = 32
TOKEN_RANGE = (1000, 40000)  # ordinary tokens of SmolLM2's 49152: no special ones


# ---- one level --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    requests: int
    prompt_len: int = PROMPT_LEN  # token ids: the router validates and hashes each
    output_len: int = OUTPUT_LEN  # tokens streamed from the worker on to the client


def parse_levels(spec: str) -> list[Level]:
    """`"1:200,16:800"` -> levels of (concurrency, requests)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        c, _, n = item.partition(":")
        level = Level(int(c), int(n))
        if level.concurrency < 1 or level.requests < 1:
            raise ValueError(f"a level needs concurrency >= 1 and requests >= 1: {item!r}")
        out.append(level)
    return out


async def _senders(
    clients: list[Client], bodies: BodyMaker, n: int, deadline: float, level: Level
) -> list[RequestOutput]:
    """One closed-loop sender per client shares `n` requests; none starts after `deadline`."""
    rng = random.Random(n * 1000 + len(clients))
    left = n
    outputs: list[RequestOutput] = []

    async def sender(client: Client) -> None:
        nonlocal left
        while left > 0 and time.perf_counter() < deadline:
            left -= 1
            prompt = tuple(rng.randrange(*TOKEN_RANGE) for _ in range(level.prompt_len))
            body = bodies.single(prompt, level.output_len)
            outputs.append(await client.send(bodies.path, body, "router", level.prompt_len))

    await asyncio.gather(*(sender(c) for c in clients))
    return outputs


async def run_level(
    url: str, level: Level, pids: dict[str, int], time_cap_s: float
) -> dict[str, Any]:
    # A connection pool of its own for each sender: one shared by all of them costs the
    # client CPU per request that grows with the number of connections (httpx's pool
    # scans them on every request and response), which at 64 took more of the shared
    # cores than the router did.
    async with contextlib.AsyncExitStack() as stack:
        https = [await stack.enter_async_context(make_http(60.0)) for _ in range(level.concurrency)]
        clients = [Client(http, url, {}, 60.0) for http in https]
        model = str((await https[0].get(url + "/v1/models")).json()["data"][0]["id"])
        bodies = BodyMaker(
            "completions",
            model,
            None,  # type: ignore[arg-type]  # prompts go as ids: no tokenizer is used
            ignore_eos=True,
            temperature=0.0,
            extra_body={},
        )
        # Warm-up: connections open, caches and code paths warm; not counted.
        warmup = max(WARMUP, level.concurrency)
        await _senders(clients, bodies, warmup, time.perf_counter() + 30, level)
        before = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        outputs = await _senders(clients, bodies, level.requests, t0 + time_cap_s, level)
        duration = time.perf_counter() - t0
        after = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
    row = level_figures(level, outputs, duration, before, after, ticks_per_second())
    # What else the machine ran meanwhile: on shared cores it inflates every figure here.
    row["loadavg_1m"] = os.getloadavg()[0]
    return row


def level_figures(
    level: Level,
    outputs: list[RequestOutput],
    duration: float,
    before: dict[str, int],
    after: dict[str, int],
    ticks_per_s: int,
) -> dict[str, Any]:
    ok = [o for o in outputs if o.success]
    ttft = Stats.of_seconds([o.ttft for o in ok])
    row: dict[str, Any] = {
        "concurrency": level.concurrency,
        "requests": level.requests,
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "not_sent": level.requests - len(outputs),  # the time cap ran out first
        "errors": sorted({o.error for o in outputs if not o.success})[:5],
        "duration_s": duration,
        "req_s": len(ok) / duration if duration > 0 else 0.0,
        "ttft_p50_ms": ttft.median,
        "ttft_p99_ms": ttft.p99,
        "ttft_mean_ms": ttft.mean,
    }
    for name in before:
        row[f"{name}_cpu_ms_per_req"] = cpu_ms_per_request(
            before[name], after[name], len(ok), ticks_per_s
        )
    return row


def run_levels(
    url: str, levels: list[Level], pids: dict[str, int], time_cap_s: float, label: str
) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        row = asyncio.run(run_level(url, level, pids, time_cap_s))
        rows.append(row)
        print(
            f"{label} concurrency {level.concurrency}: {row['completed']} done, "
            f"{row['req_s']:.1f} req/s",
            flush=True,
        )
    return rows
