"""The command line end to end: `python -m loadtest run|scenario|compare`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cli import main
from tests.helpers.scripted_server import Script, ScriptedServer

ROOT = Path(__file__).resolve().parents[2]


def test_run_end_to_end(smollm_path: Path, tmp_path: Path) -> None:
    with ScriptedServer(Script(ttft=0.02, itl=0.01)) as srv:
        cmd = [
            sys.executable,
            "-m",
            "loadtest",
            "run",
            "--url",
            srv.url,
            "--tokenizer",
            str(smollm_path),
            "--num-prompts",
            "6",
            "--input-len",
            "16",
            "--output-len",
            "5",
            "--concurrency",
            "1,3",
            "--goodput",
            "ttft:500",
            "tpot:100",
            "--out",
            str(tmp_path),
            "--label",
            "cli",
            "--quiet",
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| random | 3 | inf | 6 | 0 |" in done.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "cli-random-c1-rinf.json",
        "cli-random-c3-rinf.json",
        "cli-summary.json",
        "cli-summary.md",
        "cli-throughput.png",
        "cli-latency.png",
        "cli-cdf.png",
    } <= names
    point = json.loads((tmp_path / "cli-random-c3-rinf.json").read_text())
    assert point["goodput"] == {"ttft": 500.0, "tpot": 100.0}
    assert point["request_goodput"] > 0


def test_scenario_file_and_compare(
    smollm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        'name = "tiny"\ninput_len = 8\noutput_len = 3\nnum_prompts = 4\n'
        '[[workload]]\nname = "a"\nconcurrency = 2\n'
        '[[workload]]\nname = "b"\nendpoint = "chat"\nrequest_rate = 50\n'
    )
    common = ["--tokenizer", str(smollm_path), "--quiet", "--out", str(tmp_path)]
    with ScriptedServer(Script(ttft=0.01, itl=0.01)) as srv:
        for label in ("one", "two"):
            argv = ["scenario", str(scenario), "--url", srv.url, "--label", label]
            assert main(argv + common) == 0
    table = capsys.readouterr().out
    assert "| a | 2 | inf | 4 |" in table and "| b | - | 50 | 4 |" in table
    assert "| overall |" in table
    assert (
        main(["compare", str(tmp_path / "one-summary.json"), str(tmp_path / "two-summary.json")])
        == 0
    )
    text = capsys.readouterr().out
    assert {"### a c2 rinf", "### b cinf r50.0", "### overall c2 rinf"} <= set(text.splitlines())
    assert "| completed | 4 | 4 | 1.00x |" in text


def test_bad_input_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "no-such-scenario"]) == 2
    assert "no scenario file" in capsys.readouterr().err
