"""The ramp sent to one router: each arrival a streaming /v1/completions at its offset,
open loop (a slow cluster does not slow the senders down, as real users would not).

Bounded: each request by `request_timeout_s`, the whole run by the ramp's length plus
`grace_s` (what is still running then is cancelled and counted as failed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.autoscale.ramp import Arrival
from loadtest.client import Client, make_http
from loadtest.itl import settle
from loadtest.records import RequestOutput


@dataclass(slots=True)
class Sent:
    arrival: Arrival
    out: RequestOutput
    done_s: float  # when its answer ended, from the ramp's start


def _body(model: str, a: Arrival) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": list(a.prompt),
        "max_tokens": a.output_len,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def drive(
    url: str,
    arrivals: list[Arrival],
    t0: float,
    request_timeout_s: float = 120.0,
    grace_s: float = 150.0,
) -> list[Sent]:
    """Send every arrival at `t0` (a time.monotonic()) + its offset; what each got."""
    async with make_http(request_timeout_s) as http:
        model = str((await http.get(url + "/v1/models")).json()["data"][0]["id"])
        client = Client(http, url, {}, request_timeout_s)
        results: list[Sent] = []

        async def one(a: Arrival) -> None:
            await asyncio.sleep(max(0.0, t0 + a.at_s - time.monotonic()))
            out = await client.send("/v1/completions", _body(model, a), a.phase, len(a.prompt))
            settle(out, lambda text: 1)  # usage counts the tokens; chunks share it evenly
            results.append(Sent(a, out, time.monotonic() - t0))

        tasks = [asyncio.create_task(one(a)) for a in arrivals]
        last = arrivals[-1].at_s if arrivals else 0.0
        deadline = t0 + last + grace_s
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    sent = {id(s.arrival) for s in results}
    for a in arrivals:  # cut off by the deadline: failed, not forgotten
        if id(a) not in sent:
            out = RequestOutput(a.phase, input_len=len(a.prompt))
            out.fail("cancelled", f"still running {grace_s:g} s after the ramp")
            results.append(Sent(a, out, time.monotonic() - t0))
    return sorted(results, key=lambda s: s.arrival.at_s)
