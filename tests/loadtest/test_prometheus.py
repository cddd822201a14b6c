import pytest

from loadtest.prometheus import diff, parse_metrics, series_name, tandem_summary

BEFORE = """\
# TYPE tandem_requests_total counter
tandem_requests_total{route="local_prefill",status="ok"} 3
tandem_requests_total{route="disaggregated",status="ok"} 1
# TYPE tandem:prompt_tokens_total counter
tandem:prompt_tokens_total 1000
# TYPE tandem:prompt_tokens_cached_total counter
tandem:prompt_tokens_cached_total 100
# TYPE tandem_nixl_bytes_total counter
tandem_nixl_bytes_total 5e6
# TYPE tandem:time_to_first_token_seconds histogram
tandem:time_to_first_token_seconds_bucket{le="0.1"} 2
tandem:time_to_first_token_seconds_bucket{le="+Inf"} 4
tandem:time_to_first_token_seconds_count 4
tandem:time_to_first_token_seconds_sum 1.5
"""

AFTER = """\
# TYPE tandem_requests_total counter
tandem_requests_total{route="local_prefill",status="ok"} 5
tandem_requests_total{route="disaggregated",status="ok"} 7
tandem_requests_total{route="disaggregated",status="error"} 1
# TYPE tandem:prompt_tokens_total counter
tandem:prompt_tokens_total 3000
# TYPE tandem:prompt_tokens_cached_total counter
tandem:prompt_tokens_cached_total 600
# TYPE tandem_nixl_bytes_total counter
tandem_nixl_bytes_total 2.5e7
"""


def test_parse_reads_labels_and_histogram_samples() -> None:
    m = parse_metrics(BEFORE)
    key = ("tandem_requests_total", (("route", "local_prefill"), ("status", "ok")))
    assert m[key] == 3.0
    assert m[("tandem:time_to_first_token_seconds_count", ())] == 4.0
    assert series_name(key) == 'tandem_requests_total{route="local_prefill",status="ok"}'


def test_diff_of_named_series_new_and_reset() -> None:
    before, after = parse_metrics(BEFORE), parse_metrics(AFTER)
    d = diff(before, after, ["tandem_requests_total", "tandem:prompt_tokens_total"])
    assert d == {
        'tandem_requests_total{route="disaggregated",status="error"}': 1.0,  # new series
        'tandem_requests_total{route="disaggregated",status="ok"}': 6.0,
        'tandem_requests_total{route="local_prefill",status="ok"}': 2.0,
        "tandem:prompt_tokens_total": 2000.0,
    }
    # A counter that went down was reset (a restart): its delta is its new value.
    assert diff(after, before, ["tandem:prompt_tokens_total"]) == {
        "tandem:prompt_tokens_total": 1000.0
    }


def test_tandem_summary() -> None:
    s = tandem_summary(parse_metrics(BEFORE), parse_metrics(AFTER))
    assert s["prefix_cache_hit_rate"] == pytest.approx(500 / 2000)
    assert s["nixl_bytes"] == pytest.approx(2e7)
    assert s["requests_by_route"] == {"local_prefill": 2.0, "disaggregated": 7.0}
    assert tandem_summary({}, {})["prefix_cache_hit_rate"] is None  # a server without them
