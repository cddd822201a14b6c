"""bench/soak/'s bookkeeping, without a cluster: how answers are counted, memory read
from /proc, and the report's lines."""

from __future__ import annotations

import os

import pytest

from bench.soak.cli import report
from bench.soak.cluster import Tracked, rss_kb
from bench.soak.config import SoakConfig
from bench.soak.load import Tally
from loadtest.records import RequestOutput


def _out(text: str = "", category: str = "") -> RequestOutput:
    out = RequestOutput("soak", chunk_texts=[text] if text else [])
    if category:
        out.fail(category, f"{category} happened")
    return out


def test_answers_are_counted_by_kind_and_texts_checked_against_the_first() -> None:
    tally = Tally()
    tally.take(1, _out("abc"))
    tally.take(1, _out("abc"))
    tally.take(1, _out("abd"))  # same prompt, another text: a wrong continuation
    tally.take(2, _out(category="http_429"))
    tally.take(2, _out(category="stream"))
    f = tally.figures(duration_s=2.0)
    assert (f["sent"], f["completed"], f["failed"], f["rejected_429"]) == (5, 3, 1, 1)
    assert f["mismatched_text"] == 1 and f["failed_by_category"] == {"stream": 1}
    assert f["completed_per_s"] == 1.5 and f["errors"] == ["stream: stream happened"]


def test_rss_of_a_live_process_and_of_none() -> None:
    assert (rss_kb(os.getpid()) or 0) > 1000  # this interpreter: megabytes
    t = Tracked.of("me", os.getpid())
    t.end()
    assert t.rss_start_kb and t.rss_end_kb
    assert rss_kb(2**22 + 1) is None  # above the kernel's pid limit: nobody


def test_a_config_that_cannot_soak_is_refused() -> None:
    with pytest.raises(ValueError):
        SoakConfig(decode_workers=1)  # a kill would leave no decode worker at all
    with pytest.raises(ValueError):
        SoakConfig(kill_every_s=0)


def test_the_report_names_failures_metrics_and_memory() -> None:
    result = {
        "duration_s": 60.0,
        "kills": [{"worker": "decode-0", "at_s": 15.0, "restart_s": 7.0}],
        "requests": Tally(completed=10, rejected=2).figures(60.0),
        "router": {"tandem_decode_retries_total": {"when=mid_stream": 3.0}},
        "pools": {"decode-0": {"error": "UNAVAILABLE: engine loop stopped"}},
        "processes": [
            {"name": "router", "pid": 7, "rss_start_kb": 2048, "rss_end_kb": None, "killed": False}
        ],
    }
    text = report(result)
    assert "12 requests in 60 s, 1 workers killed: 10 completed, 0 failed" in text
    assert "when=mid_stream 3" in text and "engine loop stopped" in text
    assert "router" in text and "       2            -" in text
