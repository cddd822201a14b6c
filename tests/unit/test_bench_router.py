"""bench.router's arithmetic: CPU counters from /proc/PID/stat, per-request CPU, a level's row."""

from __future__ import annotations

import os

import pytest

from bench import router as bench_router
from bench.proc_cpu import cpu_ms_per_request, cpu_ms_per_second, cpu_ticks, read_cpu_ticks
from bench.router_levels import OUTPUT_LEN, PROMPT_LEN, Level, level_figures, parse_levels
from bench.router_report import against_floor
from loadtest.records import RequestOutput

# A real line's shape: the command name holds a space and a ')' of its own.
STAT = (
    "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 9000 0 12 0 "
    "250 75 3 4 20 0 5 0 12345 100000 2000 18446744073709551615"
)


def test_cpu_ticks_are_utime_plus_stime_after_the_command_name() -> None:
    assert cpu_ticks(STAT) == 250 + 75


def test_read_cpu_ticks_of_this_process() -> None:
    before = read_cpu_ticks(os.getpid())
    sum(i * i for i in range(200_000))  # some CPU
    assert read_cpu_ticks(os.getpid()) >= before >= 0


def test_cpu_ms_per_request_from_two_samples() -> None:
    # 150 ticks at 100 per second = 1.5 s of CPU over 300 requests = 5 ms each.
    assert cpu_ms_per_request(1000, 1150, 300, 100) == pytest.approx(5.0)
    assert cpu_ms_per_request(1000, 1000, 10, 100) == 0.0
    assert cpu_ms_per_request(1000, 1150, 0, 100) is None


def test_cpu_ms_per_second_while_idle() -> None:
    # 3 ticks at 100 per second over 10 s: 30 ms of CPU, 3 ms per second.
    assert cpu_ms_per_second(500, 503, 10.0, 100) == pytest.approx(3.0)


def test_parse_levels() -> None:
    assert parse_levels("1:200, 16:800,") == [Level(1, 200), Level(16, 800)]
    assert parse_levels("1:200")[0].prompt_len == PROMPT_LEN
    assert parse_levels("1:200")[0].output_len == OUTPUT_LEN
    with pytest.raises(ValueError):
        parse_levels("0:10")


@pytest.mark.parametrize("flag", ["--prompt-len", "--output-len"])
def test_no_tokens_in_or_out_is_refused_before_anything_starts(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench_router.main([flag, "0", "--out", "/nonexistent/never-written"])
    assert "must be at least 1" in capsys.readouterr().err


def _ok(ttft: float) -> RequestOutput:
    out = RequestOutput("router", ttft=ttft)
    out.chunk_times.append(ttft)
    return out


def test_level_figures() -> None:
    failed = RequestOutput("router")
    failed.fail("stream", "broken")
    outputs = [_ok(0.001), _ok(0.003), failed]
    before = {"router": 100, "worker": 50}
    after = {"router": 102, "worker": 54}
    row = level_figures(Level(4, 5), outputs, 0.5, before, after, 100)
    assert (row["completed"], row["failed"], row["not_sent"]) == (2, 1, 2)
    assert row["req_s"] == pytest.approx(4.0)
    assert row["ttft_p50_ms"] == pytest.approx(2.0)
    assert row["router_cpu_ms_per_req"] == pytest.approx(10.0)  # 20 ms over 2 completed
    assert row["worker_cpu_ms_per_req"] == pytest.approx(20.0)
    assert row["errors"] == ["broken"]


def test_rows_read_against_the_floor_of_the_same_concurrency() -> None:
    floor = [
        {"concurrency": 1, "router_cpu_ms_per_req": 1.5, "ttft_p50_ms": 2.0},
        {"concurrency": 16, "router_cpu_ms_per_req": None, "ttft_p50_ms": 10.0},
    ]
    rows = [
        {"concurrency": 1, "router_cpu_ms_per_req": 3.0, "ttft_p50_ms": 5.0},
        {"concurrency": 16, "router_cpu_ms_per_req": 2.0, "ttft_p50_ms": 15.0},
        {"concurrency": 64, "router_cpu_ms_per_req": 2.0, "ttft_p50_ms": 50.0},
    ]
    against_floor(rows, floor)
    assert rows[0]["router_cpu_ms_per_req_vs_floor"] == pytest.approx(2.0)
    assert rows[0]["ttft_p50_ms_vs_floor"] == pytest.approx(2.5)
    assert rows[1]["router_cpu_ms_per_req_vs_floor"] is None  # the floor's counter had nothing
    assert rows[1]["ttft_p50_ms_vs_floor"] == pytest.approx(1.5)
    assert "ttft_p50_ms_vs_floor" not in rows[2]  # no floor row at 64
