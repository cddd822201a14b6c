"""Result files: vLLM's JSON fields, the summary, the markdown table, plots, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.compare import compare, compare_files
from loadtest.report import markdown_table
from loadtest.scenario import ScenarioResult
from loadtest.tokenizer import HFTokenizer
from tests.helpers.scripted_server import Script, ScriptedServer
from tests.loadtest.conftest import run

VLLM_FIELDS = [
    *("date", "backend", "model_id", "num_prompts", "request_rate", "burstiness"),
    *("max_concurrency", "duration", "completed", "failed", "total_input_tokens"),
    *("total_output_tokens", "request_throughput", "request_goodput", "output_throughput"),
    *("total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "errors"),
] + [
    f"{stat}_{metric}_ms"
    for metric in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "std", "p90", "p99")
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(
    tokenizer: HFTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ScenarioResult, Path]:
    out = tmp_path_factory.mktemp("out")
    scenario = {
        "name": "sw",
        "input_len": 8,
        "output_len": 5,
        "num_prompts": 10,
        "concurrency": [1, 5],
        "goodput": {"ttft": 1000, "tpot": 100},
    }
    with ScriptedServer(Script(ttft=0.02, itl=0.01, fail_every=4)) as srv:
        res = run(srv.url, tokenizer, scenario, out_dir=out, label="base")
    return res, out


def test_point_files_have_vllm_fields_and_ours(swept: tuple[ScenarioResult, Path]) -> None:
    res, out = swept
    d = json.loads((out / "base-sw-c5-rinf.json").read_text())
    assert not [f for f in VLLM_FIELDS if f not in d]
    assert {"label", "server_metrics", "error_breakdown", "cancelled"} <= set(d)
    assert (d["label"], d["backend"], d["max_concurrency"], d["request_rate"]) == (
        "base",
        "openai",
        5,
        "inf",
    )
    # The server fails its 4th, 8th, ... request: 12, 16 and 20 fall in this second step.
    assert (d["completed"], d["failed"], d["error_breakdown"]) == (7, 3, {"http_500": 3})
    assert len(d["ttfts"]) == len(d["itls"]) == len(d["errors"]) == 10
    assert d["server_metrics"]["requests_by_route"] == {"local_prefill": 10.0}
    assert d["mean_ttft_ms"] == pytest.approx(res.sweep()[1].ttft_ms.mean)


def test_summary_markdown_and_plots(swept: tuple[ScenarioResult, Path]) -> None:
    res, out = swept
    summary = json.loads((out / "base-summary.json").read_text())
    assert [s["workloads"]["sw"]["max_concurrency"] for s in summary["steps"]] == [1, 5]
    assert "ttfts" not in summary["steps"][0]["workloads"]["sw"]  # no per-request lists
    table = (out / "base-summary.md").read_text()
    assert table.strip() == markdown_table(res)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| workload | concurrency | rate (req/s) |")
    assert "output tok/s" in lines[0] and "ITL p99 ms" in lines[0] and "TTFT p99 ms" in lines[0]
    assert len(lines) == 2 + 2  # header, rule, one row per concurrency
    assert lines[2].startswith("| sw | 1 | inf | 8 | 2 (http_500: 2) |")
    for name in ("throughput", "latency", "cdf"):
        path = out / f"base-{name}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    assert set(res.files) >= {out / "base-summary.json", out / "base-cdf.png"}


def test_compare_prints_ratios(swept: tuple[ScenarioResult, Path], tmp_path: Path) -> None:
    _, out = swept
    a = json.loads((out / "base-sw-c1-rinf.json").read_text())
    b = dict(a, label="faster", output_throughput=a["output_throughput"] * 2, p99_itl_ms=0.0)
    (tmp_path / "b.json").write_text(json.dumps(b))
    text = compare_files(out / "base-sw-c1-rinf.json", tmp_path / "b.json")
    assert "(base)" in text and "(faster)" in text
    row = next(line for line in text.splitlines() if line.startswith("| output_throughput |"))
    assert row.endswith("| 2.00x |")
    assert "| completed | 8 | 8 | 1.00x |" in text
    assert next(line for line in text.splitlines() if "| p99_itl_ms |" in line).endswith(
        "| 0.00x |"
    )
    # Summaries compare step by step.
    summary = json.loads((out / "base-summary.json").read_text())
    both = compare(summary, summary)
    assert both.count("### ") == 2 and "### sw c5 rinf" in both
    with pytest.raises(ValueError, match="no common"):
        compare(summary, a | {"workload": "other"})
