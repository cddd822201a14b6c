"""top_logprobs at the router's edge: what it asks of the engine, and each endpoint's shape
of the answer (OpenAI's: chat's list of {token, logprob, bytes}, completions' map from text
to logprob), whole and streamed. The engine's figures against transformers':
tests/integration/test_smollm_top_logprobs.py."""

from __future__ import annotations

from typing import Any

from services.router.backend import TokenDelta
from tests.unit.test_router_app import TOKENIZER, ScriptedBackend, _chat_body, _post, _sse

A, B, C = (TOKENIZER.encode(s)[0] for s in "abc")


def _scripted(text: str = "ab") -> ScriptedBackend:
    """One delta per token of `text`, each with its top three: itself, then two others."""
    ids = TOKENIZER.encode(text)
    deltas = [
        TokenDelta([t], [-0.1], top_logprobs=[((t, -0.1), (C, -2.5), (A if t != A else B, -3.0))])
        for t in ids
    ]
    deltas[-1].finished, deltas[-1].finish_reason = True, "stop"
    return ScriptedBackend(deltas)


def test_chat_top_logprobs_ask_the_engine_and_come_back_per_token() -> None:
    backend = _scripted()
    r = _post(backend, "/v1/chat/completions", _chat_body(logprobs=True, top_logprobs=3))
    assert r.status_code == 200, r.text
    assert backend.requests[0].params.top_logprobs == 3
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["a", "b"]
    first = content[0]["top_logprobs"]
    assert first == [
        {"token": "a", "logprob": -0.1, "bytes": [97]},
        {"token": "c", "logprob": -2.5, "bytes": [99]},
        {"token": "b", "logprob": -3.0, "bytes": [98]},
    ]


def test_streamed_chat_chunks_carry_their_tokens_top_logprobs() -> None:
    body = _chat_body(logprobs=True, top_logprobs=3, stream=True)
    chunks = _sse(_post(_scripted("abc"), "/v1/chat/completions", body))
    entries: list[Any] = [
        e
        for c in chunks[1:]
        if c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert [len(e["top_logprobs"]) for e in entries] == [3, 3, 3]
    assert [e["top_logprobs"][0]["token"] for e in entries] == ["a", "b", "c"]


def test_completions_logprobs_k_is_a_map_per_position_likeliest_first() -> None:
    backend = _scripted()
    r = _post(backend, "/v1/completions", {"prompt": "x", "max_tokens": 5, "logprobs": 3})
    assert backend.requests[0].params.top_logprobs == 3
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b"]
    assert lp["top_logprobs"] == [
        {"a": -0.1, "c": -2.5, "b": -3.0},
        {"b": -0.1, "c": -2.5, "a": -3.0},
    ]
    assert list(lp["top_logprobs"][0]) == ["a", "c", "b"]


def test_two_tokens_of_the_same_text_keep_the_likelier_in_completions_map() -> None:
    deltas = [TokenDelta([A], [-0.1], True, "stop", top_logprobs=[((A, -0.1), (A, -4.0))])]
    r = _post(ScriptedBackend(deltas), "/v1/completions", {"prompt": "x", "logprobs": 2})
    assert r.json()["choices"][0]["logprobs"]["top_logprobs"] == [{"a": -0.1}]


def test_logprobs_without_top_keep_their_old_shape() -> None:
    r = _post(_scripted(), "/v1/completions", {"prompt": "x", "logprobs": 0})
    assert r.json()["choices"][0]["logprobs"]["top_logprobs"] is None
    r = _post(_scripted(), "/v1/chat/completions", _chat_body(logprobs=True))
    assert r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


def test_a_stop_string_inside_a_delta_cuts_its_top_logprobs_too() -> None:
    ids = TOKENIZER.encode("abcab")
    tops = [((t, -0.2),) for t in ids]
    delta = TokenDelta(ids, [-0.2] * 5, True, "length", top_logprobs=tops)
    body = {"prompt": "x", "max_tokens": 9, "stop": "c", "logprobs": 1}
    lp = _post(ScriptedBackend([delta]), "/v1/completions", body).json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b", "c"] and len(lp["top_logprobs"]) == 3
