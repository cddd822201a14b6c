"""The disaggregation-at-scale benchmark's pure parts: the workload's scenario and demand,
the planner's P:D split, the host's CPU figure, the ratios and the goal."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bench.disagg_scale import report
from bench.disagg_scale.hostload import busy_cores
from bench.disagg_scale.split import capacity, demand, plan, targets_at
from bench.disagg_scale.workload import CHAT_TEMPLATE_TOKENS, FOREGROUND, Mixed, dilated, scaled
from engine.config import MockTiming
from loadtest.scenario_file import scenario_from_dict

W = Mixed(chat_concurrency=16, chat_input=64, chat_output=128, long_rate=6.0, long_input=4096)


def test_the_scenario_is_one_loadtest_accepts() -> None:
    cfg = scenario_from_dict(W.scenario())
    chats, longs = cfg.workloads
    assert chats.name == FOREGROUND and not chats.background and chats.endpoint == "chat"
    assert chats.loads[0].concurrency == 16 and chats.dataset.output_len == 128
    assert chats.goodput.as_dict() == {"ttft": 1000.0, "tpot": 25.0}
    assert longs.background and longs.loads[0].request_rate == 6.0
    # Enough long prompts to keep arriving until the run's bound.
    assert longs.dataset.num_prompts == W.long_prompts >= 6.0 * cfg.max_duration


def test_scaled_scales_rate_and_concurrency() -> None:
    s = scaled(W, 0.5)
    assert (s.chat_concurrency, s.long_rate) == (8, 3.0)
    assert scaled(W, 0.01).chat_concurrency == 1


def test_dilated_slows_arrivals_and_slos_not_the_work() -> None:
    d = dilated(W, 0.25)
    assert d.long_rate == pytest.approx(1.5)
    assert (d.chat_ttft_ms, d.chat_tpot_ms) == (4000.0, 100.0)
    assert (d.chat_concurrency, d.long_input, d.chat_output) == (16, 4096, 128)


def test_a_dilated_cluster_gets_the_same_split() -> None:
    """Time scaled uniformly (speed) changes no queue: the planner splits alike."""
    fast, slow = MockTiming(), MockTiming(speed=0.25)
    cap, cap_slow = capacity(fast, 0.0), capacity(slow, 0.0)
    s = plan(demand(W, cap), cap, 16)
    s_slow = plan(demand(dilated(W, 0.25), cap_slow), cap_slow, 16, targets_at(0.25))
    assert (s_slow.prefill, s_slow.decode) == (s.prefill, s.decode)
    assert s.itl_s is not None and s_slow.itl_s == pytest.approx(4 * s.itl_s)


def test_capacity_follows_the_timing_model() -> None:
    cap = capacity(MockTiming(), context=0.0)
    assert cap.prefill_tok_s == pytest.approx(1024 / 0.1044)  # 2 ms + 1024 x 0.1 ms
    assert cap.decode is not None
    assert cap.decode.step_s(1) == pytest.approx(0.01005)  # 2 + 8 + 0.05 ms
    fast = capacity(MockTiming(speed=2.0), context=1000.0)
    assert fast.prefill_tok_s == pytest.approx(2 * cap.prefill_tok_s)
    assert fast.decode is not None
    assert fast.decode.per_seq_s == pytest.approx((0.05 + 0.04) / 2 / 1000)


def test_demand_counts_prompt_tokens_and_decoding_requests() -> None:
    cap = capacity(MockTiming(), context=0.0)
    d = demand(W, cap)
    chat_rate = 16 / (128 * 0.01005)
    want = chat_rate * (64 + CHAT_TEMPLATE_TOKENS) + 6.0 * 4096
    assert d.prefill_tok_s == pytest.approx(want)
    assert d.requests == round(16 + 6.0 * 16 * 0.01005)
    assert d.blocks_per_worker == 4096 and d.max_num_seqs == 64


def test_the_split_covers_the_prompt_load_and_gives_decode_the_rest() -> None:
    cap = capacity(MockTiming(), context=0.0)
    s = plan(demand(W, cap), cap, 16)
    # ~25.7k prompt tokens/s against 9.8k a worker at 80% utilization: 4 prefill workers
    # take all of it, and the 12 others decode with nothing to prefill.
    assert (s.prefill, s.decode) == (4, 12)
    assert cap.decode is not None
    assert s.itl_s == pytest.approx(cap.decode.step_s(17 / 12))  # 17 requests on 12 workers
    # Left free, the planner would run fewer: 3 prefill, and 1 decode worker absorbing the rest.
    assert sum(s.fewest.values()) < 16


def test_more_prompt_load_moves_workers_to_prefill() -> None:
    cap = capacity(MockTiming(), context=0.0)
    light = plan(demand(replace(W, long_rate=2.0), cap), cap, 16)
    heavy = plan(demand(replace(W, long_rate=10.0), cap), cap, 16)
    assert light.prefill < 4 < heavy.prefill
    assert light.prefill + light.decode == heavy.prefill + heavy.decode == 16


def test_busy_cores_from_proc_stat_counters() -> None:
    assert busy_cores((1000, 400), (1200, 500), 2) == pytest.approx(1.0)  # half idle of 2
    assert busy_cores((1000, 400), (1000, 400), 2) == 0.0


def _mode(itl: float, tok_s: float, failed: int = 0) -> dict[str, Any]:
    return {
        "itl_p99_ms": itl,
        "itl_median_ms": 10.0,
        "ttft_p99_ms": 200.0,
        "output_tok_s": tok_s,
        "goodput_req_s": 10.0,
        "failed": failed,
    }


def test_ratios_and_goal() -> None:
    r = report.ratios(_mode(20.0, 1900.0), _mode(100.0, 2000.0))
    assert r["itl_p99_ms"] == pytest.approx(0.2) and r["output_tok_s"] == pytest.approx(0.95)
    assert report.goal(r, failed=0)["met"]
    assert not report.goal(r, failed=1)["met"]
    slow = report.ratios(_mode(20.0, 1700.0), _mode(100.0, 2000.0))
    assert not report.goal(slow, failed=0)["met"]
    spiky = report.ratios(_mode(60.0, 2000.0), _mode(100.0, 2000.0))
    g = report.goal(spiky, failed=0)
    assert not g["itl_ok"] and g["throughput_ok"] and not g["met"]


def test_a_missing_figure_is_no_ratio_and_no_goal() -> None:
    d, c = _mode(20.0, 1900.0), _mode(100.0, 2000.0)
    c["goodput_req_s"] = None
    assert report.ratios(d, c)["goodput_req_s"] is None
    assert report.ratio(1.0, 0.0) is None


def test_the_table_names_both_modes_the_ratio_and_the_verdict() -> None:
    d, c = _mode(20.0, 1900.0), _mode(100.0, 2000.0)
    result = {"disagg": d, "colocated": c, "ratios": report.ratios(d, c)}
    result["goal"] = report.goal(result["ratios"], 0)
    text = report.table(result)
    assert "disagg / colocated" in text and "0.20x" in text and "MET" in text
    assert "not sampled" in text


def test_a_busy_host_is_flagged() -> None:
    busy = {"cores": 2, "samples": 60, "busy_mean": 1.95, "busy_p90": 2.0, "busy_max": 2.0}
    calm = {**busy, "busy_mean": 1.2, "busy_p90": 1.5}
    assert report.host_bound(busy) and not report.host_bound(calm)
    assert "HOST-BOUND" in report.host_line("disagg", busy)
    assert "HOST-BOUND" not in report.host_line("disagg", calm)


def test_the_json_has_both_modes_with_the_issue_s_figures() -> None:
    from bench.disagg_scale.cli import assemble

    cap = capacity(MockTiming(), 0.0)
    d = demand(W, cap)
    split = plan(d, cap, 16)
    rows = {"disagg": _mode(20.0, 1900.0), "colocated": _mode(100.0, 2000.0)}
    for r in rows.values():
        r |= {"cancelled": 0, "host_cpu": {"cores": 2, "samples": 0}}
    rows["colocated"]["cancelled"] = 2  # chats the time bound cut off count as failures
    out = assemble(rows, split, cap, d, MockTiming(), W, ["--engine=mock"])
    for mode in ("disagg", "colocated"):
        assert {"itl_p99_ms", "output_tok_s", "goodput_req_s", "failed"} <= set(out[mode])
    assert out["failed"] == 2 and not out["goal"]["met"]
    assert out["ratios"]["itl_p99_ms"] == pytest.approx(0.2)
    assert (out["split"]["prefill"], out["split"]["decode"]) == (4, 12)
    assert out["timing"]["speed"] == 1.0 and out["workload"]["long_rate"] == 6.0
