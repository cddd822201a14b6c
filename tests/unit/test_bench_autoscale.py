"""bench/autoscale/'s bookkeeping, without a cluster: the ramp's arrivals, a sample read
from /metrics, worker-seconds from a timeline, changes per stable window, how soon a
step's new worker served, and the JSON's shape."""

from __future__ import annotations

import pytest

from bench.autoscale import clusters, ramp
from bench.autoscale.drive import Sent
from bench.autoscale.report import Slo, cluster_figures, goals, pools, stability
from bench.autoscale.timeline import (
    Change,
    Sample,
    changes,
    read,
    ready_after,
    too_close,
    worker_seconds,
)
from loadtest.records import RequestOutput


def _s(t: float, ready: tuple[int, int], desired: tuple[int, int] | None = None) -> Sample:
    d = {} if desired is None else {"prefill": desired[0], "decode": desired[1]}
    return Sample(t, {"prefill": ready[0], "decode": ready[1]}, d)


def test_a_sample_counts_the_workers_the_router_sees_and_what_the_autoscaler_set() -> None:
    text = "\n".join(
        [
            'tandem_kv_blocks_total{worker="decode-0"} 4096.0',
            'tandem_kv_blocks_total{worker="decode-3"} 4096.0',
            'tandem_kv_blocks_total{worker="prefill-1"} 4096.0',
            'tandem_kv_blocks_used{worker="decode-0"} 12.0',
            'tandem_autoscaler_desired_replicas{pool="decode"} 3.0',
            'tandem_autoscaler_desired_replicas{pool="prefill"} 1.0',
        ]
    )
    assert read(text) == ({"prefill": 1, "decode": 2}, {"prefill": 1, "decode": 3})
    assert read("") == ({"prefill": 0, "decode": 0}, {})  # static: no autoscaler series


def test_worker_seconds_integrate_the_step_function_and_charge_workers_starting() -> None:
    samples = [_s(-1, (0, 1), (0, 1)), _s(2, (0, 1), (0, 2)), _s(4, (0, 2), (0, 2))]
    # [0, 2): 1 worker; [2, 4): 2 (one asked for, not serving yet: it costs); [4, 10): 2
    assert worker_seconds(samples, 0.0, 10.0) == pytest.approx(2 * 1 + 2 * 2 + 6 * 2)
    static = [_s(t, (2, 3)) for t in (-0.5, 0.0, 0.5, 1.0)]
    assert worker_seconds(static, 0.0, 60.0) == pytest.approx(5 * 60)  # count x duration


def test_changes_follow_the_desired_size_and_two_in_a_window_are_flagged() -> None:
    samples = [
        _s(-1, (1, 1), (1, 1)),
        _s(0.5, (1, 1), (0, 1)),  # from t = 0 on: counted
        _s(3, (0, 1), (0, 2)),
        _s(5, (0, 2), (0, 3)),  # 2 s after the last decode change: inside a 5 s window
        _s(20, (0, 3), (0, 2)),
    ]
    found = changes(samples)
    assert found == [
        Change(0.5, "prefill", 1, 0),
        Change(3, "decode", 1, 2),
        Change(5, "decode", 2, 3),
        Change(20, "decode", 3, 2),
    ]
    assert too_close(found, 5.0) == {"prefill": [], "decode": [(3, 5)]}
    s = stability(samples, 5.0)
    assert s["scale_changes"] == {"prefill": 1, "decode": 3}
    # a static cluster: its registered sizes, which never change
    assert changes([_s(t, (2, 3)) for t in range(5)]) == []


def test_ready_after_runs_from_the_step_that_grew_the_pool_to_its_new_worker() -> None:
    steps = [("low", 0.0), ("high", 10.0), ("down", 20.0)]
    samples = [
        _s(0, (0, 1), (0, 1)),
        _s(11, (0, 1), (0, 2)),  # asked for 1 s into "high"
        _s(14, (0, 2), (0, 2)),  # serving 4 s into it
        _s(25, (0, 1), (0, 1)),  # shrinking is not a growth
    ]
    assert ready_after(samples, "decode", steps, 30.0) == [
        {"step": "high", "from": 1, "to": 2, "decided_after_s": 1.0, "ready_after_s": 4.0}
    ]
    assert ready_after(samples, "prefill", steps, 30.0) == []
    # a worker asked for before the step, serving after it grew again, is not its new one
    late = [_s(0, (0, 0), (0, 1)), _s(11, (0, 1), (0, 2)), _s(15, (0, 2), (0, 2))]
    assert ready_after(late, "decode", steps, 30.0)[0]["ready_after_s"] == 5.0
    p = pools(samples, steps, 30.0)["decode"]
    assert (p["initial"], p["max"], p["final"], p["ready_after_s"]) == (1, 2, 1, 4.0)
    assert p["timeline"] == [[0, 1, 1], [11, 1, 2], [14, 2, 2], [25, 1, 1]]


def test_the_ramp_is_the_same_for_every_cluster_and_follows_its_rates() -> None:
    phases = (ramp.Phase("a", 100, 1.0, 1.0, 8, 4), ramp.Phase("b", 100, 4.0, 0.0, 16, 2))
    one, two = ramp.schedule(phases, seed=3), ramp.schedule(phases, seed=3)
    assert one == two and [a.at_s for a in one] == sorted(a.at_s for a in one)
    a = [x for x in one if x.phase == "a"]
    b = [x for x in one if x.phase == "b"]
    assert 70 < len(a) < 130 and 150 < len(b) < 250  # 100 and 200 expected
    assert sum(x.at_s < 150 for x in b) > 2 * sum(x.at_s >= 150 for x in b)  # it falls
    assert {len(x.prompt) for x in b} == {16} and len(set(x.prompt for x in one)) == len(one)
    assert ramp.phase_starts(phases) == [("a", 0.0), ("b", 100.0)]
    assert ramp.schedule(phases, limit=5)[-1].phase == "a"


def test_static_minimum_runs_one_prefill_worker_when_the_floor_is_zero() -> None:
    setup = clusters.Setup(prefill=(0, 2), decode=(1, 3))
    assert setup.sizes("static_min") == {"prefill": 1, "decode": 1}
    assert setup.sizes("static_max") == {"prefill": 2, "decode": 3}
    assert "--autoscale" not in setup.serve_args("static_max")
    assert "--prefill-replicas=0:2" in setup.serve_args("autoscaled")
    with pytest.raises(ValueError):
        clusters.Setup(decode=(0, 2))


def _sent(at: float, ttft: float, chunk_gap: float, ok: bool = True) -> Sent:
    a = ramp.Arrival(at, "up", (1, 2, 3), 4)
    out = RequestOutput("up", start=0.0, end=ttft + 3 * chunk_gap, ttft=ttft, output_len=4)
    if not ok:
        out.fail("http_429", "full")
    return Sent(a, out, at + out.end)


def test_figures_count_good_requests_against_the_slos_and_the_json_has_its_fields() -> None:
    slo = Slo(ttft_s=1.0, tpot_s=0.06)
    sent = [_sent(1, 0.2, 0.05), _sent(2, 1.5, 0.05), _sent(3, 0.2, 0.08), _sent(4, 0, 0, False)]
    samples = [_s(-1, (0, 1), (0, 1)), _s(5, (1, 1), (1, 1))]
    f = cluster_figures(sent, samples, ramp_s=10.0, slo=slo)
    assert (f["requests"], f["failed"], f["good"]) == (4, 1, 1)
    assert f["goodput_req_s"] == pytest.approx(0.1)
    assert f["worker_seconds"] == pytest.approx(5 * 1 + 5 * 2)
    assert f["failed_by_category"] == {"http_429": 1}
    assert f["phases"]["up"] == {"requests": 4, "good": 1, "failed": 1}
    result = {
        "clusters": {
            "autoscaled": {**f, "goodput_req_s": 0.96, "worker_seconds": 50.0, "failed": 0},
            "static_max": {**f, "goodput_req_s": 1.0, "worker_seconds": 100.0},
        },
        "stability": stability(samples, 5.0),
    }
    g = goals(result)
    assert g["goodput_vs_static_max"]["pass"] and g["failed"]["pass"]
    assert g["worker_seconds_vs_static_max"] == {"value": 0.5, "goal": "<= 0.6", "pass": True}
    assert g["changes_within_one_stable_window"]["value"] == 0
