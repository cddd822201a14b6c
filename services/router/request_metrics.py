"""Each request's figures, as the router sees them, under the names vLLM's dashboards read.

Every family here is vLLM's (vllm/v1/metrics/loggers.py in vLLM 0.32) with `tandem:` for
`vllm:`, labelled with `model_name` (the served model name): vLLM's Grafana dashboard finds
them after one relabelling rule (README "Metrics"), and ours (deploy/grafana) reads them as
they are. The engine's own figures (running and waiting requests, KV-cache usage,
preemptions, prefix-cache queries) come from the workers (services/worker/metrics.py).

Beyond vLLM: a request's start split into the workers' stages (backend.StartTimes): queue,
prefill, and for a disaggregated request the KV transfer and the decode worker's first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.router.backend import StartTimes

# CPU serving spans milliseconds (a cached prompt, one decode step of a small model) to
# minutes (a long prompt on a busy laptop), so the buckets do too.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
# 1, 2, 5, 10, 20, 50, ... tokens (vLLM's shape), to past any context we serve
TOKEN_BUCKETS = tuple(m * 10**e for e in range(7) for m in (1, 2, 5))

ABORT = "abort"  # the finished_reason of a request cut short (a failed one's is "error")


@dataclass(frozen=True, slots=True)
class Finished:
    """One request at its end, as the HTTP edge saw it (times from its arrival, seconds)."""

    finished_reason: str  # stop | length | abort | error
    prompt_tokens: int
    cached_tokens: int
    generation_tokens: int
    max_tokens: int
    e2e_s: float
    first_token_s: float | None  # None: no token came
    last_token_s: float | None
    start: StartTimes | None  # what the workers reported


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        r, m = registry, model_name
        self._model = m
        self.prompt_tokens = _counter(r, m, "tandem:prompt_tokens", "Prompt tokens.")
        self.prompt_tokens_cached = _counter(
            r, m, "tandem:prompt_tokens_cached", "Prompt tokens served from a prefix cache."
        )
        self.generation_tokens = _counter(r, m, "tandem:generation_tokens", "Tokens generated.")
        self.success = Counter(
            "tandem:request_success",
            "Finished requests, by why they finished (stop, length, abort, error).",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.ttft = _histogram(
            r, m, "tandem:time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS
        )
        self.itl = _histogram(
            r, m, "tandem:inter_token_latency_seconds", "Time between tokens.", ITL_BUCKETS
        )
        self.tpot = _histogram(
            r,
            m,
            "tandem:request_time_per_output_token_seconds",
            "A request's mean time per output token after its first.",
            ITL_BUCKETS,
        )
        self.e2e = _histogram(
            r,
            m,
            "tandem:e2e_request_latency_seconds",
            "Arrival to the last token (or the failure).",
            LATENCY_BUCKETS,
        )
        self._sizes(r, m)
        self._stages(r, m)

    def _sizes(self, r: CollectorRegistry, m: str) -> None:
        def h(name: str, doc: str) -> Histogram:
            return _histogram(r, m, name, doc, TOKEN_BUCKETS)

        self.request_prompt = h("tandem:request_prompt_tokens", "Each request's prompt tokens.")
        self.request_generation = h(
            "tandem:request_generation_tokens", "Tokens each request generated."
        )
        # vLLM's is the longest sequence of an n > 1 request; each choice is a request here
        self.request_max_generation = h(
            "tandem:request_max_num_generation_tokens",
            "The most tokens one sequence of a request generated.",
        )
        self.request_max_tokens = h(
            "tandem:request_params_max_tokens", "Each request's max_tokens."
        )

    def _stages(self, r: CollectorRegistry, m: str) -> None:
        def h(name: str, doc: str) -> Histogram:
            return _histogram(r, m, name, doc, LATENCY_BUCKETS)

        self.queue = h("tandem:request_queue_time_seconds", "Waiting for a worker's batch.")
        self.prefill = h("tandem:request_prefill_time_seconds", "Admitted to the first token.")
        self.kv_transfer = h(
            "tandem:request_kv_transfer_time_seconds",
            "Disaggregated: at the decode worker until the prompt's KV landed.",
        )
        self.first_decode = h(
            "tandem:request_first_decode_time_seconds",
            "Disaggregated: the prompt's KV landed to the decode worker's first token.",
        )
        self.decode = h("tandem:request_decode_time_seconds", "First token to last.")
        self.inference = h(
            "tandem:request_inference_time_seconds", "Prefill and decode time together."
        )

    # ---- as a request runs ------------------------------------------------------------
    def admitted(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def tokens(self, count: int, gap_seconds: float | None) -> None:
        """`count` tokens arrived together, `gap_seconds` after the previous ones (None for
        the first): each counts as one inter-token gap of gap/count."""
        self.generation_tokens.inc(count)
        if gap_seconds is not None and count > 0:
            for _ in range(count):
                self.itl.observe(gap_seconds / count)

    # ---- at its end -------------------------------------------------------------------
    def finished(self, r: Finished) -> None:
        self.success.labels(self._model, r.finished_reason).inc()
        self.e2e.observe(r.e2e_s)
        self.prompt_tokens_cached.inc(r.cached_tokens)
        self.request_prompt.observe(r.prompt_tokens)
        self.request_generation.observe(r.generation_tokens)
        self.request_max_generation.observe(r.generation_tokens)
        self.request_max_tokens.observe(r.max_tokens)
        decode_s = None
        if r.first_token_s is not None and r.last_token_s is not None:
            decode_s = r.last_token_s - r.first_token_s
            self.decode.observe(decode_s)
            if r.generation_tokens > 1:
                self.tpot.observe(decode_s / (r.generation_tokens - 1))
        self._observe_start(r.start, decode_s)

    def _observe_start(self, s: StartTimes | None, decode_s: float | None) -> None:
        if s is None:
            return
        for hist, value in (
            (self.queue, s.queue_s),
            (self.prefill, s.prefill_s),
            (self.kv_transfer, s.kv_transfer_s),
            (self.first_decode, s.first_decode_s),
        ):
            if value is not None:
                hist.observe(value)
        if s.prefill_s is not None and decode_s is not None:
            self.inference.observe(s.prefill_s + decode_s)


def _counter(r: CollectorRegistry, model: str, name: str, doc: str) -> Counter:
    """A counter family labelled by model, and its one series (the router serves one)."""
    return Counter(name, doc, ["model_name"], registry=r).labels(model)


def _histogram(
    r: CollectorRegistry, model: str, name: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(name, doc, ["model_name"], buckets=buckets, registry=r).labels(model)
