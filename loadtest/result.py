"""The figures of one run point: what `vllm bench serve` reports, under its names, plus ours.

Only requests that succeeded count in the latencies, token totals and throughputs;
failures are counted by category, and requests cancelled at the end of the time budget are
neither. Throughputs divide by the run's duration: from the start of the step to its last
request's end (or to the moment it was stopped).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.config import Goodput, LoadPoint
from loadtest.records import RequestOutput
from loadtest.stats import Stats

# The endpoint's name in vLLM's "backend" field.
BACKENDS = {"completions": "openai", "chat": "openai-chat"}
LATENCIES = ("ttft", "tpot", "itl", "e2el")
_SCALARS = (
    "duration",
    "completed",
    "failed",
    "cancelled",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What was run, as the result files name it."""

    label: str
    workload: str
    model_id: str
    tokenizer_id: str
    endpoint: str
    dataset: str
    load: LoadPoint
    num_prompts: int  # requests planned (multi-turn: every turn)


@dataclass(frozen=True, slots=True)
class RunResult:
    info: RunInfo
    date: str
    duration: float  # seconds
    completed: int
    failed: int
    cancelled: int  # in flight when the time budget ran out
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second
    request_goodput: float | None  # requests per second meeting every SLO; None: no SLO set
    output_throughput: float  # generated tokens per second
    total_token_throughput: float  # prompt + generated tokens per second
    max_output_tokens_per_s: float  # the busiest whole second
    max_concurrent_requests: int  # most requests in flight at once, as the client saw it
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats
    error_breakdown: dict[str, int]
    goodput_slos_ms: dict[str, float]
    server_metrics: dict[str, Any] | None = None
    requests: tuple[RequestOutput, ...] = field(default=(), repr=False)

    def to_dict(self, per_request: bool = True) -> dict[str, Any]:
        """vLLM's field names where the concept is the same; `per_request=False` leaves out
        the per-request lists (for summaries)."""
        i, load = self.info, self.info.load
        d: dict[str, Any] = {
            "date": self.date,
            "backend": BACKENDS[i.endpoint],
            "label": i.label,
            "workload": i.workload,
            "model_id": i.model_id,
            "tokenizer_id": i.tokenizer_id,
            "endpoint": i.endpoint,
            "dataset": i.dataset,
            "num_prompts": i.num_prompts,
            "request_rate": load.request_rate if math.isfinite(load.request_rate) else "inf",
            "burstiness": load.burstiness,
            "max_concurrency": load.concurrency,
        }
        d |= {name: getattr(self, name) for name in _SCALARS}
        for metric in LATENCIES:
            stats: Stats = getattr(self, f"{metric}_ms")
            for stat in ("mean", "median", "std", "p90", "p99"):
                d[f"{stat}_{metric}_ms"] = getattr(stats, stat)
        d |= {
            "error_breakdown": self.error_breakdown,
            "goodput": self.goodput_slos_ms,
            "server_metrics": self.server_metrics,
        }
        if per_request:
            d |= per_request_lists(self.requests)
        return d


def per_request_lists(requests: Sequence[RequestOutput]) -> dict[str, list[Any]]:
    """One entry per request sent (vLLM's shape): seconds, zeros for failed requests."""
    return {
        "input_lens": [r.input_len for r in requests],
        "output_lens": [r.output_len if r.success else 0 for r in requests],
        "ttfts": [r.ttft if r.success else 0.0 for r in requests],
        "itls": [r.itls if r.success else [] for r in requests],
        "e2els": [r.e2el if r.success else 0.0 for r in requests],
        "errors": [r.error for r in requests],
    }


def compute_result(
    info: RunInfo,
    outputs: Sequence[RequestOutput],
    duration: float,
    cancelled: int,
    goodput: Mapping[str, Goodput],  # by workload: each request is judged by its own SLOs
    server_metrics: dict[str, Any] | None = None,
) -> RunResult:
    outputs = sorted(outputs, key=lambda o: o.start)  # in the order they were sent
    ok = [o for o in outputs if o.success]
    total_in = sum(o.input_len for o in ok)
    total_out = sum(o.output_len for o in ok)
    slos = {name: g.as_dict() for name, g in goodput.items()}
    good = sum(_meets(o, slos.get(o.workload, {})) for o in ok)
    any_slo = any(slos.get(o.workload) for o in outputs)
    per_s = 1.0 / duration if duration > 0 else 0.0
    return RunResult(
        info=info,
        date=time.strftime("%Y%m%d-%H%M%S"),
        duration=duration,
        completed=len(ok),
        failed=len(outputs) - len(ok),
        cancelled=cancelled,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) * per_s,
        request_goodput=good * per_s if any_slo else None,
        output_throughput=total_out * per_s,
        total_token_throughput=(total_in + total_out) * per_s,
        max_output_tokens_per_s=float(_busiest_second(ok)),
        max_concurrent_requests=_max_in_flight(outputs),
        ttft_ms=Stats.of_seconds([o.ttft for o in ok]),
        tpot_ms=Stats.of_seconds([t for o in ok if (t := o.tpot) is not None]),
        itl_ms=Stats.of_seconds([x for o in ok for x in o.itls]),
        e2el_ms=Stats.of_seconds([o.e2el for o in ok]),
        error_breakdown=dict(Counter(o.category for o in outputs if not o.success)),
        goodput_slos_ms=slos.get(info.workload, {}),
        server_metrics=server_metrics,
        requests=tuple(outputs),
    )


def _meets(o: RequestOutput, slos_ms: Mapping[str, float]) -> bool:
    values = {"ttft": o.ttft, "tpot": o.tpot or 0.0, "e2el": o.e2el}
    return all(values[k] * 1000.0 <= limit for k, limit in slos_ms.items())


def _busiest_second(ok: Sequence[RequestOutput]) -> int:
    if not ok:
        return 0
    t0 = min(o.start for o in ok)
    buckets: Counter[int] = Counter()
    for o in ok:
        for at, n in zip(o.chunk_times, o.chunk_tokens, strict=False):
            buckets[int(o.start + at - t0)] += n
    return max(buckets.values(), default=0)


def _max_in_flight(outputs: Sequence[RequestOutput]) -> int:
    # At equal times an end sorts before a start: back-to-back requests do not overlap.
    events = sorted([(o.start, 1) for o in outputs] + [(o.end, -1) for o in outputs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
