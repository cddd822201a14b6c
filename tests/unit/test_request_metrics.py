"""A request's figures as the router records them (request_metrics.py), the start's stages
as workers report them (engine Request.sampled, backend.StartTimes), a worker's own
/metrics (worker/metrics.py) and the list Prometheus discovers workers from."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from engine.output import AdmissionCounts, StepTotals
from engine.request import Request, StartTiming
from engine.sampling_params import SamplingParams
from loadtest.prometheus import parse_metrics
from services.pb.events_pb2 import WorkerRecord
from services.router.backend import StartTimes
from services.router.metrics import RouterMetrics
from services.router.metrics_routes import targets
from services.router.request_metrics import Finished
from services.worker.metrics import WorkerCollector
from services.worker.stats import WorkerStats

MODEL = "m"


def _samples(metrics: RouterMetrics) -> dict[tuple[str, str], float]:
    """name -> value, keyed with the finished_reason label where there is one."""
    out: dict[tuple[str, str], float] = {}
    for (name, labels), v in parse_metrics(metrics.render().decode()).items():
        ls = dict(labels)
        assert ls.get("model_name") == MODEL or not name.startswith("tandem:"), (name, ls)
        if "le" not in ls:
            out[(name, ls.get("finished_reason", ""))] = v
    return out


def _finished(**kw: object) -> Finished:
    base: dict[str, object] = dict(
        finished_reason="length",
        prompt_tokens=100,
        cached_tokens=32,
        generation_tokens=5,
        max_tokens=5,
        e2e_s=1.5,
        first_token_s=0.5,
        last_token_s=1.3,
        start=StartTimes(queue_s=0.1, prefill_s=0.3),
    )
    return Finished(**{**base, **kw})  # type: ignore[arg-type]


def test_a_finished_request_fills_vllms_families() -> None:
    m = RouterMetrics(MODEL)
    m.edge.finished(_finished())
    s = _samples(m)
    assert s[("tandem:request_success_total", "length")] == 1
    assert s[("tandem:prompt_tokens_cached_total", "")] == 32
    assert s[("tandem:e2e_request_latency_seconds_sum", "")] == 1.5
    assert abs(s[("tandem:request_decode_time_seconds_sum", "")] - 0.8) < 1e-9
    # the mean gap after the first token: 0.8 s over 4 gaps
    assert abs(s[("tandem:request_time_per_output_token_seconds_sum", "")] - 0.2) < 1e-9
    assert abs(s[("tandem:request_inference_time_seconds_sum", "")] - 1.1) < 1e-9
    assert s[("tandem:request_queue_time_seconds_sum", "")] == 0.1
    assert s[("tandem:request_prefill_time_seconds_sum", "")] == 0.3
    # a colocated start has no transfer: nothing observed, not a zero
    assert s[("tandem:request_kv_transfer_time_seconds_count", "")] == 0
    assert s[("tandem:request_params_max_tokens_sum", "")] == 5


def test_a_request_that_never_got_a_token_counts_as_ended_only() -> None:
    m = RouterMetrics(MODEL)
    nothing = {"generation_tokens": 0, "first_token_s": None, "last_token_s": None}
    m.edge.finished(_finished(finished_reason="error", start=None, **nothing))
    s = _samples(m)
    assert s[("tandem:request_success_total", "error")] == 1
    assert s[("tandem:request_decode_time_seconds_count", "")] == 0
    assert s[("tandem:request_time_per_output_token_seconds_count", "")] == 0
    assert s[("tandem:request_queue_time_seconds_count", "")] == 0


def test_tokens_arriving_together_count_as_even_gaps() -> None:
    m = RouterMetrics(MODEL)
    m.edge.tokens(1, None)
    m.edge.tokens(3, 0.3)
    s = _samples(m)
    assert s[("tandem:generation_tokens_total", "")] == 4
    assert s[("tandem:inter_token_latency_seconds_count", "")] == 3
    assert abs(s[("tandem:inter_token_latency_seconds_sum", "")] - 0.3) < 1e-9


def test_start_times_keep_what_the_first_worker_said() -> None:
    prefill = StartTimes(queue_s=0.1, prefill_s=0.4)
    decode = StartTimes(kv_transfer_s=0.05, first_decode_s=0.02)
    assert prefill.then(decode) == StartTimes(0.1, 0.4, 0.05, 0.02)
    resumed = StartTimes(queue_s=9.0, prefill_s=9.0)  # a second decode worker's own start
    assert prefill.then(decode).then(resumed) == StartTimes(0.1, 0.4, 0.05, 0.02)


def test_a_request_start_is_measured_from_its_own_stamps() -> None:
    r = Request("r", [1, 2, 3], SamplingParams(), arrival_time=10.0)
    r.admitted_at = 10.5
    r.sampled(12.0)
    assert r.start == StartTiming(queue_s=0.5, kv_wait_s=0.0, compute_s=1.5)
    r.sampled(13.0)  # later tokens change nothing
    assert r.first_sampled_at == 12.0
    remote = Request("k", [1, 2, 3], SamplingParams(), arrival_time=10.0, remote_prefill=True)
    remote.admitted_at, remote.kv_ready_at = 10.25, 11.0
    remote.sampled(11.5)
    assert remote.start == StartTiming(queue_s=0.25, kv_wait_s=0.75, compute_s=0.5)


def _stats() -> WorkerStats:
    return WorkerStats(
        running=3,
        waiting=2,
        num_blocks=64,
        free_blocks=40,
        cached_blocks=8,
        used_blocks=16,
        held_blocks=4,
        leases=1,
        leases_expired=0,
        queued_prefill_tokens=10,
        kv_reads=7,
        kv_bytes_read=512,
        kv_recomputed=1,
        idle=False,
        integrity_error="",
        totals=StepTotals(prefill_tokens=300, prefill_busy_s=2.0, decode_busy_s=1.0),
        admissions=AdmissionCounts(preemptions=2, prefix_queried_tokens=400, prefix_hit_tokens=96),
    )


def test_a_worker_serves_its_engines_figures_with_its_labels() -> None:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(_stats, (MODEL, "decode-0", "decode")))
    got = parse_metrics(generate_latest(registry).decode())
    labels = (("model_name", MODEL), ("role", "decode"), ("worker_id", "decode-0"))
    assert got[("tandem:num_requests_running", labels)] == 3
    assert got[("tandem:num_requests_waiting", labels)] == 2
    assert got[("tandem:kv_cache_usage_perc", labels)] == 0.25
    assert got[("tandem:num_preemptions_total", labels)] == 2
    assert got[("tandem:prefix_cache_queries_total", labels)] == 400
    assert got[("tandem:prefix_cache_hits_total", labels)] == 96
    assert got[("tandem_worker_kv_read_bytes_total", labels)] == 512


def test_prometheus_discovers_the_workers_that_serve_metrics() -> None:
    records = [
        WorkerRecord(worker_id="prefill-0", role="prefill", metrics_address="10.0.0.2:9100"),
        WorkerRecord(worker_id="decode-0", role="decode", metrics_address="10.0.0.3:9100"),
        WorkerRecord(worker_id="decode-1", role="decode"),  # serves none
    ]
    assert targets(records) == [
        {"targets": ["10.0.0.3:9100"], "labels": {"worker_id": "decode-0", "role": "decode"}},
        {"targets": ["10.0.0.2:9100"], "labels": {"worker_id": "prefill-0", "role": "prefill"}},
    ]
