"""The load generator against a real HTTP server with scripted timings."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from loadtest.tokenizer import HFTokenizer
from tests.helpers.scripted_server import WORD, Script, ScriptedServer
from tests.loadtest.conftest import run

# Scheduling noise on a shared 2-core machine: client and server share one process.
SLACK_MS = 25


def test_known_timings_give_known_figures(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.05, itl=0.02)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {"input_len": 16, "output_len": 10, "num_prompts": 8, "concurrency": 4},
        )
    r = res.workloads[res.name]
    assert (r.completed, r.failed, r.total_output_tokens) == (8, 0, 80)
    assert r.total_input_tokens == 8 * 16
    assert 50 <= r.ttft_ms.mean <= 50 + SLACK_MS
    assert 20 <= r.itl_ms.median <= 20 + SLACK_MS / 2
    assert 20 <= r.tpot_ms.mean <= 20 + SLACK_MS / 2
    assert 230 <= r.e2el_ms.mean <= 230 + 2 * SLACK_MS  # 50 + 9 x 20
    assert all(len(o.itls) == 9 for o in r.requests)
    # Two rounds of four requests: duration ~ 2 x 230 ms; throughputs are per second of it.
    assert 0.46 <= r.duration <= 0.46 + 0.2
    assert r.request_throughput == pytest.approx(8 / r.duration)
    assert r.output_throughput == pytest.approx(80 / r.duration)
    assert r.total_token_throughput == pytest.approx((80 + 128) / r.duration)
    assert r.max_concurrent_requests == 4
    assert r.request_goodput is None  # no SLO given
    assert r.server_metrics is not None and r.server_metrics["prefix_cache_hit_rate"] == 0.25


def test_chat_role_chunk_is_not_the_first_token_and_double_chunks_split(
    tokenizer: HFTokenizer,
) -> None:
    # Every 3rd chunk carries two tokens, 40 ms after the previous one: two ITLs of 20 ms.
    with ScriptedServer(Script(ttft=0.05, itl=0.02, double_every=3)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {"endpoint": "chat", "input_len": 16, "output_len": 12, "num_prompts": 3},
        )
    r = res.workloads[res.name]
    assert srv.seen.bodies[0]["messages"][0]["role"] == "user"
    assert r.completed == 3 and r.total_output_tokens == 36
    assert r.ttft_ms.mean >= 50  # not the role chunk, which comes at once
    for o in r.requests:
        assert sum(o.chunk_tokens) == 12 and 2 in o.chunk_tokens
        assert len(o.itls) == 11
    assert 20 <= r.itl_ms.p90 <= 20 + SLACK_MS / 2  # no 40 ms gap left unsplit
    assert r.itl_ms.mean == pytest.approx(r.tpot_ms.mean, rel=0.1)


def test_requests_one_after_another_reuse_one_connection(tokenizer: HFTokenizer) -> None:
    # The client reads each stream to its end after [DONE], so its connection goes back to
    # the pool instead of being closed (and reopened by the next request).
    with ScriptedServer(Script(ttft=0.0, itl=0.0)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {"input_len": 8, "output_len": 3, "num_prompts": 5, "concurrency": 1},
        )
    assert res.workloads[res.name].completed == 5
    assert len(srv.seen.clients) == 1


def test_failures_are_counted_by_category(tokenizer: HFTokenizer) -> None:
    script = Script(ttft=0.02, itl=0.01, fail_every=5, break_every=7, hang_every=11)
    with ScriptedServer(script) as srv:
        res = run(
            srv.url,
            tokenizer,
            {
                "input_len": 8,
                "output_len": 4,
                "num_prompts": 12,
                "concurrency": 1,
                "request_timeout": 1.0,
                "goodput": {"e2el": 1000},
            },
        )
    r = res.workloads[res.name]
    # requests 5 and 10: HTTP 500; 7: broken stream; 11: hangs past the 1 s timeout
    assert r.error_breakdown == {"http_500": 2, "stream": 1, "timeout": 1}
    assert (r.completed, r.failed) == (8, 4)
    errors = r.to_dict()["errors"]
    assert errors[4] == "scripted failure" and errors[6] == "scripted break"
    assert r.request_goodput == pytest.approx(8 / r.duration)


def test_no_server_is_a_connection_error(tokenizer: HFTokenizer) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there: connections are refused
    res = run(url, tokenizer, {"input_len": 8, "output_len": 4, "num_prompts": 2}, model="m")
    r = res.workloads[res.name]
    assert r.error_breakdown == {"connection": 2} and r.completed == 0
    assert r.server_metrics is None


def test_concurrency_limit_is_enforced(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.03, itl=0.01)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {"input_len": 8, "output_len": 4, "num_prompts": 18, "concurrency": 3},
        )
    assert srv.seen.max_in_flight == 3
    assert res.workloads[res.name].max_concurrent_requests == 3


def test_max_duration_stops_a_run(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.05, itl=0.05)) as srv:
        t0 = time.perf_counter()
        res = run(
            srv.url,
            tokenizer,
            {
                "input_len": 8,
                "output_len": 10,
                "num_prompts": 200,
                "request_rate": 20,
                "max_duration": 1.0,
            },
        )
        wall = time.perf_counter() - t0
    r = res.workloads[res.name]
    assert wall < 3.0
    # never before max_duration; a busy machine can be late to stop (a CI run: 2.04 s)
    assert 0.95 <= r.duration < 2.5
    assert r.cancelled > 0 and r.failed == 0  # in flight at the end: cancelled, not failed
    assert 5 <= r.completed + r.cancelled < 60  # ~20 req/s for 1 s, never all 200


def test_trace_is_replayed_by_timestamp(tokenizer: HFTokenizer, tmp_path: Path) -> None:
    rows = [(600, 40), (0, 10), (500, 30), (200, 20)]  # (ms, input tokens), out of order
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps({"timestamp": t, "input_length": n, "output_length": 2, "hash_ids": [n]})
            for t, n in rows
        )
    )
    with ScriptedServer(Script(ttft=0.01, itl=0.01)) as srv:
        run(
            srv.url,
            tokenizer,
            {"dataset": "mooncake", "dataset_path": str(trace), "time_scale": 0.5},
        )
    assert [len(b["prompt"]) for b in srv.seen.bodies] == [10, 20, 30, 40]
    # Offsets from the first arrival, not gaps between neighbours: one arrival a busy
    # machine delays shortens the gap after it, though the replay kept its schedule.
    first = srv.seen.arrivals[0]
    offsets_ms = [(t - first) * 1000 for t in srv.seen.arrivals[1:]]
    # Never early; late by a busy machine's hiccup (one arrival came 40 ms late in a make
    # test), but not by the 100+ ms that an unscaled schedule (200, 500, 600) would be.
    for got, want in zip(offsets_ms, [100, 250, 300], strict=True):  # (200, 500, 600) x 0.5
        assert want - 5 <= got <= want + 90


def test_multi_turn_sends_the_history_after_each_answer(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.02, itl=0.01)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {
                "endpoint": "chat",
                "dataset": "multi-turn",
                "num_prompts": 2,
                "turns": 3,
                "input_len": 8,
                "output_len": 3,
                "concurrency": 2,
            },
        )
    r = res.workloads[res.name]
    assert r.completed == 6 and r.info.num_prompts == 6
    lengths = sorted(len(b["messages"]) for b in srv.seen.bodies)
    assert lengths == [1, 1, 3, 3, 5, 5]
    last = next(b for b in srv.seen.bodies if len(b["messages"]) == 5)["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[1]["content"] == WORD * 3  # the answer actually received


def test_multi_turn_on_completions_uses_the_chat_template(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.01, itl=0.01)) as srv:
        run(
            srv.url,
            tokenizer,
            {
                "dataset": "multi-turn",
                "num_prompts": 1,
                "turns": 2,
                "input_len": 8,
                "output_len": 2,
            },
        )
    first, second = (b["prompt"] for b in srv.seen.bodies)
    assert isinstance(first, list) and second[: len(first)] == first


def test_warmup_is_left_out_and_body_has_vllm_extensions(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.01, itl=0.01)) as srv:
        res = run(
            srv.url,
            tokenizer,
            {
                "input_len": 8,
                "output_len": 3,
                "num_prompts": 5,
                "warmup": 3,
                "extra_body": {"top_k": 1},
            },
        )
    assert len(srv.seen.bodies) == 8
    r = res.workloads[res.name]
    assert r.completed == 5 and len(r.requests) == 5
    body = srv.seen.bodies[-1]
    assert body["model"] == "scripted"  # the first model /v1/models lists
    assert isinstance(body["prompt"], list) and len(body["prompt"]) == 8  # token ids
    assert (body["max_tokens"], body["min_tokens"], body["ignore_eos"]) == (3, 3, True)
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["top_k"] == 1


def test_without_usage_tokens_are_counted_and_without_metrics_none(tokenizer: HFTokenizer) -> None:
    with ScriptedServer(Script(ttft=0.01, itl=0.01, usage=False, metrics=False)) as srv:
        res = run(srv.url, tokenizer, {"input_len": 8, "output_len": 5, "num_prompts": 2})
    r = res.workloads[res.name]
    assert r.total_output_tokens == 10  # " the" x 5 counted with the tokenizer
    assert r.server_metrics is None


def test_two_workloads_run_together_and_report_apart(tokenizer: HFTokenizer) -> None:
    scenario = {
        "name": "mixed",
        "input_len": 8,
        "workload": [
            {
                "name": "chats",
                "endpoint": "chat",
                "output_len": 10,
                "num_prompts": 6,
                "concurrency": 2,
                "goodput": {"ttft": 500},
            },
            {
                "name": "long",
                "background": True,
                "output_len": 2,
                "num_prompts": 100,
                "request_rate": 10,
            },
        ],
    }
    with ScriptedServer(Script(ttft=0.05, itl=0.02)) as srv:
        res = run(srv.url, tokenizer, scenario)
    chats, long = res.workloads["chats"], res.workloads["long"]
    assert chats.completed == 6 and chats.info.endpoint == "chat"
    # The background workload ran beside the chats and stopped with them (~0.7 s at 10/s).
    assert 2 <= long.completed + long.cancelled < 30
    assert long.duration == pytest.approx(chats.duration, abs=0.2)
    assert res.overall.completed == chats.completed + long.completed
    # each chat judged by the chats' SLO (a busy machine can make some miss it)
    met = sum(o.ttft <= 0.5 for o in chats.requests)
    assert chats.request_goodput == pytest.approx(met / chats.duration)
    assert long.request_goodput is None  # no SLO of its own
    kinds = {("messages" in b, "prompt" in b) for b in srv.seen.bodies}
    assert kinds == {(True, False), (False, True)}
