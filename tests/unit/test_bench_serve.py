"""bench.serve's pure parts: the GEMM-only bound's arithmetic, the goals and the rows."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from bench.serve import report, roofline
from bench.serve.cli import scenario


def test_roofline_from_timings() -> None:
    # 100 ms of prompt GEMMs, 40 ms per decode step at batch 32: per request
    # 0.1 + 63 * 0.04 / 32 = 0.17875 s for 64 tokens.
    assert roofline.roofline_tok_s(0.1, 0.04, 32, 64) == pytest.approx(64 / 0.17875)
    # batch 1: every decode step is the request's own
    assert roofline.roofline_tok_s(0.1, 0.02, 1, 64) == pytest.approx(64 / (0.1 + 63 * 0.02))
    # one output token: the prefill alone
    assert roofline.roofline_tok_s(0.5, 9.0, 4, 1) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        roofline.roofline_tok_s(0.1, 0.02, 0, 64)


def test_bound_per_level_uses_the_batch_seen() -> None:
    t = roofline.GemmTimes("float32", 0.1, {1: 0.02, 8: 0.03, 32: 0.04})
    # 8 requests at concurrency 32: at most 8 in flight
    b = t.bound({1: 8, 32: 8}, 64)
    assert b[1] == pytest.approx(64 / (0.1 + 63 * 0.02))
    assert b[32] == pytest.approx(64 / (0.1 + 63 * 0.03 / 8))
    assert roofline.batch_seen(16, 64) == 16 and roofline.batch_seen(32, 8) == 8


def test_pick_faster_dtype() -> None:
    slow = roofline.GemmTimes("bfloat16", 0.3, {1: 0.05, 16: 0.06})
    fast = roofline.GemmTimes("float32", 0.1, {1: 0.02, 16: 0.04})
    assert roofline.pick_faster([slow, fast], {1: 8, 16: 64}, 64).dtype == "float32"
    assert roofline.pick_faster([fast, slow], {1: 8, 16: 64}, 64).dtype == "float32"


def _result(tok_s: float, ttft: float, tpot: float, itl_p99: float) -> Any:
    stats = SimpleNamespace
    return SimpleNamespace(
        output_throughput=tok_s,
        ttft_ms=stats(mean=ttft),
        tpot_ms=stats(mean=tpot),
        itl_ms=stats(p99=itl_p99),
        completed=8,
        failed=0,
        cancelled=0,
    )


def _rows() -> list[dict[str, Any]]:
    figures = {  # system: {concurrency: (tok/s, TTFT, TPOT, ITL p99)}
        "vllm": {1: (45.0, 170.0, 20.0, 30.0), 16: (200.0, 400.0, 50.0, 90.0)},
        "tandem-default": {1: (20.0, 400.0, 50.0, 70.0), 16: (170.0, 300.0, 60.0, 99.0)},
        "tandem-recommended": {1: (44.0, 160.0, 21.0, 25.0), 16: (230.0, 400.0, 45.0, 80.0)},
    }
    return [report.row(s, c, _result(*f)) for s, by_c in figures.items() for c, f in by_c.items()]


def test_row_shape_is_json() -> None:
    rows = _rows()
    keys = {"system", "concurrency", "output_tok_s", "ttft_mean_ms", "tpot_mean_ms"}
    keys |= {"itl_p99_ms", "failed"}
    for r in rows:
        assert keys <= r.keys()
    failed = report.failed_row("vllm", 32, 96, "RuntimeError: vLLM exited (1)")
    assert failed["failed"] == 96 and failed["error"].startswith("RuntimeError")
    assert failed.keys() >= keys and failed["output_tok_s"] is None
    assert json.loads(json.dumps(rows + [failed]))[-1] == failed


def test_nothing_completed_gives_no_figures() -> None:
    res = _result(0.0, 0.0, 0.0, 0.0)
    res.completed, res.cancelled = 0, 16  # all cut at the time bound
    r = report.row("vllm", 16, res)
    assert r["output_tok_s"] is None and r["ttft_mean_ms"] is None and r["cancelled"] == 16
    assert report.ratio([r, report.row("tandem-default", 16, _result(9, 9, 9, 9))],
                        "tandem-default", 16, "output_tok_s") is None  # fmt: skip


def test_goals() -> None:
    goals = {(g.system, g.concurrency, g.metric): g for g in report.check_goals(_rows())}
    tok16 = goals["tandem-recommended", 16, "output_tok_s"]
    assert tok16.ratio == pytest.approx(1.15) and tok16.met is True
    tpot1 = goals["tandem-recommended", 1, "tpot_mean_ms"]
    assert tpot1.ratio == pytest.approx(1.05) and tpot1.met is True  # at the limit: met
    assert goals["tandem-recommended", 16, "ttft_mean_ms"].met is True  # 400 <= 1.0 x 400
    assert goals["tandem-default", 16, "output_tok_s"].met is True  # 0.85 >= 0.8
    # concurrency 32 was not run: not measured, neither met nor failed
    assert goals["tandem-default", 32, "output_tok_s"].met is None
    assert "not measured" in goals["tandem-default", 32, "output_tok_s"].line()
    slower = [r | {"output_tok_s": 100.0} if r["system"] != "vllm" else r for r in _rows()]
    assert report.check_goals(slower)[0].met is False


def test_goal_not_measured_when_vllm_failed() -> None:
    rows = [r for r in _rows() if r["system"] != "vllm"]
    rows += [report.failed_row("vllm", c, 8, "boom") for c in (1, 16)]
    assert all(g.met is None for g in report.check_goals(rows))
    text = report.table(rows, {"1": 50.0, "16": 250.0})
    assert "error: boom" in text and "GEMM-only bound" in text


def test_rounds_combine_to_each_figures_median_and_summed_counts() -> None:
    first, second, third = _rows(), _rows(), _rows()
    scale = {id(first): 1.0, id(second): 0.5, id(third): 0.8}
    rounds = [[r | {"output_tok_s": r["output_tok_s"] * scale[id(rows)]} for r in rows]
              for rows in (first, second, third)]  # fmt: skip
    # a round where vLLM failed at 16: its figures count nowhere, its requests as failed
    rounds[2] = [r for r in rounds[2] if (r["system"], r["concurrency"]) != ("vllm", 16)]
    rounds[2].append(report.failed_row("vllm", 16, 64, "boom"))
    combined = {(r["system"], r["concurrency"]): r for r in report.combine(rounds)}
    assert len(combined) == len(first)
    t16 = combined["tandem-recommended", 16]
    assert t16["output_tok_s"] == pytest.approx(230.0 * 0.8)  # the median of three
    assert t16["completed"] == 3 * first[-1]["completed"] and t16["failed"] == 0
    v16 = combined["vllm", 16]
    v16_first = next(r for r in first if (r["system"], r["concurrency"]) == ("vllm", 16))
    # two rounds left: the mean of the middle pair
    assert v16["output_tok_s"] == pytest.approx(v16_first["output_tok_s"] * 0.75)
    assert v16["failed"] == 64 and v16["error"] == "boom"
    one = sorted(first, key=lambda r: (r["system"], r["concurrency"]))
    assert report.combine([first]) == one  # one round: its own rows


def test_scenario_is_the_same_prompts_for_every_system() -> None:
    a, b = scenario(16, 64, 300), scenario(16, 64, 300)
    assert a == b and a["seed"] != scenario(32, 96, 300)["seed"]
    assert a["input_len"] == 256 and a["output_len"] == 64 and a["ignore_eos"] is True
