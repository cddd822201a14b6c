"""The soak's load: closed-loop senders that back off on 429 and 503, a killer that takes
a worker down every few seconds, and the tally of what came back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.soak.cluster import Cluster
from bench.soak.config import SoakConfig
from loadtest.client import Client, make_http
from loadtest.prometheus import parse_metrics
from loadtest.records import RequestOutput

PROMPTS = 256  # cycled: each prompt's first completion is the reference for the rest
RETRY_AFTER_S = 1.0  # what the router's 429 and 503 say (services/router/admission.py)
BACK_OFF = ("http_429", "http_503")  # answers with Retry-After: the sender waits, then goes on
REQUEST_TIMEOUT_S = 60.0
ROUTER_SERIES = (  # the router's counters worth a line, summed over their labels
    "tandem_requests_total",
    "tandem_http_errors_total",
    "tandem_decode_retries_total",
    "tandem_prefill_retries_total",
    "tandem_prefill_fallbacks_total",
    "tandem_worker_breaker_total",
    "tandem_worker_health_check_failures_total",
    "tandem_kv_recomputed_total",
)


# ---- load --------------------------------------------------------------------------------
@dataclass(slots=True)
class Tally:
    completed: int = 0
    rejected: int = 0  # 429
    failed: dict[str, int] = field(default_factory=dict)  # by category
    mismatched: int = 0  # a text that differs from its prompt's first completion
    errors: list[str] = field(default_factory=list)  # a few, for the report
    reference: dict[int, str] = field(default_factory=dict)

    def figures(self, duration_s: float) -> dict[str, Any]:
        failed = sum(self.failed.values())
        return {
            "sent": self.completed + self.rejected + failed,
            "completed": self.completed,
            "failed": failed,
            "failed_by_category": self.failed,
            "rejected_429": self.rejected,
            "mismatched_text": self.mismatched,
            "completed_per_s": self.completed / duration_s if duration_s > 0 else 0.0,
            "errors": self.errors,
        }

    def take(self, prompt: int, out: RequestOutput) -> None:
        if out.success:
            self.completed += 1
            want = self.reference.setdefault(prompt, out.generated_text)
            self.mismatched += out.generated_text != want
        elif out.category == "http_429":
            self.rejected += 1
        else:
            self.failed[out.category] = self.failed.get(out.category, 0) + 1
            if len(self.errors) < 10:
                self.errors.append(f"{out.category}: {out.error}"[:300])


def _body(model: str, prompt: int, output_tokens: int) -> dict[str, Any]:
    # 40 to 140 tokens: a few full blocks, more for some, so routing sees cache hits
    filler = " and then the tide came in" * (5 + prompt % 20)
    return {
        "model": model,
        "prompt": f"Soak prompt {prompt}: once upon a time{filler}.",
        "max_tokens": output_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _sender(
    client: Client, model: str, k: int, c: SoakConfig, deadline: float, tally: Tally
) -> None:
    for n in range(1_000_000):  # bounded by the deadline long before the count
        if time.monotonic() >= deadline:
            return
        prompt = (k + n * c.senders) % PROMPTS
        out = await client.send("/v1/completions", _body(model, prompt, c.output_tokens), "", 0)
        tally.take(prompt, out)
        if out.category in BACK_OFF:
            await asyncio.sleep(RETRY_AFTER_S)


async def _killer(cluster: Cluster, deadline: float, kills: list[dict[str, Any]]) -> None:
    """Every kill_every_s until the deadline: kill -9 the next worker, start it again."""
    c = cluster.config
    victims = [
        name
        for i in range(max(c.decode_workers, c.prefill_workers))
        for name in (f"decode-{i}", f"prefill-{i}")
        if name in cluster.workers
    ]
    t0 = time.monotonic()
    for n in range(int(c.duration_s // c.kill_every_s)):
        await asyncio.sleep(max(0.0, t0 + (n + 1) * c.kill_every_s - time.monotonic()))
        if time.monotonic() >= deadline:
            return
        victim = victims[n % len(victims)]
        at = time.monotonic() - t0
        cluster.kill(victim)
        await asyncio.to_thread(cluster.start_worker, victim, n + 1)
        back = time.monotonic() - t0 - at
        kills.append({"worker": victim, "at_s": round(at, 1), "restart_s": round(back, 1)})
        print(f"  {at:6.1f} s: killed {victim}, back after {back:.1f} s", flush=True)


async def run_load(cluster: Cluster) -> tuple[Tally, list[dict[str, Any]], float]:
    c = cluster.config
    tally = Tally()
    kills: list[dict[str, Any]] = []
    async with make_http(REQUEST_TIMEOUT_S) as http:
        model = str((await http.get(cluster.url + "/v1/models")).json()["data"][0]["id"])
        client = Client(http, cluster.url, {}, REQUEST_TIMEOUT_S)
        t0 = time.monotonic()
        deadline = t0 + c.duration_s
        senders = [_sender(client, model, k, c, deadline, tally) for k in range(c.senders)]
        await asyncio.gather(_killer(cluster, deadline, kills), *senders)
    return tally, kills, time.monotonic() - t0


# ---- report ------------------------------------------------------------------------------
def router_figures(url: str) -> dict[str, dict[str, float]]:
    """Each counter of ROUTER_SERIES by its labels (`k=v,...`; "" for none)."""
    samples = parse_metrics(httpx.get(url + "/metrics", timeout=10).text)
    out: dict[str, dict[str, float]] = {name: {} for name in ROUTER_SERIES}
    for (name, labels), value in samples.items():
        if name in out:
            out[name][",".join(f"{k}={v}" for k, v in labels)] = value
    return out
