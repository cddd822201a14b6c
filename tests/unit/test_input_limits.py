"""Input limits at the router's HTTP edge: every value out of range is a 400 naming its field
in OpenAI's error shape, every value in range reaches the backend as parameters the wire
(proto/worker.proto) carries intact, and the OpenAPI schema states the same limits.

Each limit is here once, at its edge: the last value accepted and the first refused. The
fuzz test (tests/integration/test_fuzz_api.py) drives the same edge from the schema.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError

from engine.sampler import SampleRow, sample
from engine.sampling_params import (
    MAX_LOGIT_BIAS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    SamplingParams,
)
from services.router.app import create_app
from services.router.completion_body import CompletionRequest
from services.router.errors import validation_error
from services.router.metrics import RouterMetrics
from services.router.protocol import MAX_N, MAX_PROMPTS
from services.router.tool_bodies import MAX_TOOLS
from services.router.unicode_check import has_lone_surrogate
from services.wire.engine_types import params_from_pb, params_to_pb
from tests.unit.test_router_app import MODEL, TOKENIZER, ScriptedBackend, _deltas

CHAT, CMPL = "/v1/chat/completions", "/v1/completions"
TOOL_NAME = "tools[0].function.name"  # a function name has no spaces (OpenAI's rule)
VOCAB = TOKENIZER.vocab_size
U32, I64 = 2**32, 2**63


def _post(path: str, raw: str | dict[str, Any]) -> tuple[httpx.Response, ScriptedBackend]:
    """POST `raw` (a body, or JSON text for what json.dumps cannot write) with the model."""
    backend = ScriptedBackend(_deltas("ok"))
    if isinstance(raw, dict):
        base: dict[str, Any] = {"prompt": "x"}
        if path == CHAT:
            base = {"messages": [{"role": "user", "content": "hi"}]}
        raw = json.dumps({"model": MODEL, "max_tokens": 4, **base, **raw})
    return asyncio.run(_send(backend, path, raw)), backend


async def _send(backend: ScriptedBackend, path: str, raw: str) -> httpx.Response:
    app = create_app(backend, TOKENIZER, MODEL, 256, RouterMetrics(MODEL))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        headers = {"content-type": "application/json"}
        return await http.post(path, content=raw.encode("utf-8", "surrogatepass"), headers=headers)


def _raw(path: str, fields: str) -> str:
    """A body whose extra `fields` are JSON text (NaN, lone-surrogate escapes)."""
    base = '"messages": [{"role": "user", "content": "hi"}]' if path == CHAT else '"prompt": "x"'
    return f'{{"model": "{MODEL}", "max_tokens": 4, {base}, {fields}}}'


# ---- refused: (path, body or raw JSON fields, the param named) -------------------------
REFUSED: list[tuple[str, dict[str, Any] | str, str]] = [
    (CMPL, {"temperature": 2.0001}, "temperature"),
    (CMPL, {"temperature": -0.0001}, "temperature"),
    (CMPL, '"temperature": NaN', "temperature"),
    (CMPL, {"top_p": 0.0}, "top_p"),
    (CMPL, {"top_p": 1.0001}, "top_p"),
    (CMPL, {"top_k": -2}, "top_k"),
    (CMPL, {"top_k": U32}, "top_k"),  # past the wire's uint32
    (CMPL, {"seed": -I64 - 1}, "seed"),  # OpenAI's int64
    (CMPL, {"seed": I64}, "seed"),
    (CMPL, {"max_tokens": 0}, "max_tokens"),
    (CMPL, {"max_tokens": 2.5}, "max_tokens"),
    (CMPL, {"max_tokens": U32}, "max_tokens"),  # past the context, long before the uint32
    (CHAT, {"max_completion_tokens": 0}, "max_completion_tokens"),
    (CMPL, {"min_tokens": -1}, "min_tokens"),
    (CMPL, {"min_tokens": U32}, "min_tokens"),
    (CMPL, {"min_tokens": 5}, "min_tokens"),  # more than max_tokens
    (CMPL, {"n": 9}, "n"),  # choices.py's bound: 8
    (CMPL, {"n": 0}, "n"),
    (CMPL, {"presence_penalty": 2.0001}, "presence_penalty"),
    (CMPL, {"frequency_penalty": -2.0001}, "frequency_penalty"),
    (CMPL, '"presence_penalty": NaN', "presence_penalty"),
    (CMPL, {"repetition_penalty": 0}, "repetition_penalty"),
    (CMPL, {"repetition_penalty": 1e-30}, "repetition_penalty"),  # would overflow the logits
    (CMPL, {"repetition_penalty": 2.0001}, "repetition_penalty"),
    (CMPL, {"min_p": -0.1}, "min_p"),
    (CMPL, {"min_p": 1.0001}, "min_p"),
    (CMPL, {"logit_bias": {"5": 100.0001}}, "logit_bias"),
    (CMPL, {"logit_bias": {"5": "1"}}, "logit_bias"),
    (CMPL, {"logit_bias": {"five": 1.0}}, "logit_bias"),
    (CMPL, {"logit_bias": {"-1": 1.0}}, "logit_bias"),
    (CMPL, {"logit_bias": {str(VOCAB): 1.0}}, "logit_bias"),
    (CMPL, {"logit_bias": {str(i): 1.0 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
    (CMPL, {"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    (CMPL, {"stop_token_ids": [-1]}, "stop_token_ids[0]"),
    (CMPL, {"stop_token_ids": [0, 2.0, 2.5]}, "stop_token_ids[2]"),  # 2.0 is 2, 2.5 no id
    (CMPL, {"stop_token_ids": [0, True]}, "stop_token_ids[1]"),
    (CMPL, {"stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}, "stop_token_ids"),
    (CMPL, {"stop": [""]}, "stop"),
    (CMPL, {"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
    (CMPL, {"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
    (CHAT, {"top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"top_logprobs": 1}, "top_logprobs"),  # without logprobs=true, as OpenAI
    (CHAT, {"tools": [{"type": "function"}]}, "tools[0].function"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "a b"}}]}, TOOL_NAME),
    (CHAT, {"messages": [{"role": "user", "content": None}]}, "messages[0]"),
    (CHAT, {"response_format": {"type": "yaml"}}, "response_format"),
    (CMPL, {"logprobs": 6}, "logprobs"),
    (CMPL, {"echo": 2}, "echo"),
    (CMPL, {"best_of": 2}, "best_of"),
    (CMPL, {"suffix": "x"}, "suffix"),
    (CMPL, {"prompt": [-1]}, "prompt"),
    (CMPL, {"prompt": [VOCAB]}, "prompt"),
    (CMPL, {"prompt": [U32]}, "prompt"),
    (CMPL, {"prompt": [1.0, 2.5]}, "prompt"),
    (CMPL, {"prompt": [[1], [1, True]]}, "prompt"),
    (CMPL, {"prompt": []}, "prompt"),
    (CMPL, {"prompt": ""}, "prompt"),
    (CMPL, {"prompt": ["a"] * 9}, "prompt"),  # at most 8 prompts
    (CMPL, {"guided_grammar": ""}, "guided_grammar"),
    # vLLM's and OpenAI's fields that would change the answer: named, never dropped
    (CMPL, {"spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
    (CMPL, {"include_stop_str_in_output": 1}, "include_stop_str_in_output"),  # strict bool
    (CHAT, {"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),  # not a variable
    (CHAT, {"tool_choice": "required"}, "tool_choice"),
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    # Lone surrogates are no characters: the tokenizer, protobuf and JSON replies fail on them.
    (CMPL, '"stop": "\\ud800"', "stop"),
    (CMPL, '"user": "\\udfff"', "user"),
    (CHAT, '"messages": [{"role": "user", "content": "a\\ud800"}]', "messages"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), REFUSED)
def test_out_of_range_is_a_400_naming_the_field(
    path: str, body: dict[str, Any] | str, param: str
) -> None:
    r, backend = _post(path, _raw(path, body) if isinstance(body, str) else body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert not backend.requests


NEUTRAL_FIELDS: dict[str, Any] = {
    "skip_special_tokens": True,
    "include_stop_str_in_output": False,
    "tool_choice": "none",
    "user": "someone",  # OpenAI's, harmless: ignored
    "store": False,
}


@pytest.mark.parametrize("path", [CHAT, CMPL])
def test_those_fields_at_their_neutral_values_are_served(path: str) -> None:
    r, backend = _post(path, NEUTRAL_FIELDS)
    assert r.status_code == 200, r.text
    assert len(backend.requests) == 1


def test_a_lone_surrogate_in_the_prompt_or_the_model_is_a_400_not_a_500() -> None:
    prompt = '{"model": "m", "prompt": "\\ud800"}'
    model = '{"model": "\\ud800", "prompt": "x"}'  # its 404 would quote the name back
    for raw, param in ((prompt, "prompt"), (model, "model")):
        r = asyncio.run(_send(ScriptedBackend([]), CMPL, raw))
        assert (r.status_code, r.json()["error"]["param"]) == (400, param), r.text


def test_a_body_nested_deeper_than_the_stack_is_scanned_without_recursion() -> None:
    deep: Any = "\ud800"
    for _ in range(100_000):
        deep = [deep]
    assert has_lone_surrogate({"a": deep})
    assert not has_lone_surrogate({"a": ["ok", {"é": "😀"}]})


def test_a_list_of_numbers_is_passed_over_but_not_one_with_text_among_them() -> None:
    assert not has_lone_surrogate([1, 2.0, None, True] * 1000)
    assert has_lone_surrogate([1, 2.0, None, True, "\ud800"])
    assert has_lone_surrogate([1, [2, {"k": "\udfff"}]])


# ---- accepted: the edges, as the backend and the wire see them ---------------------------
ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"temperature": 2.0, "top_p": 1.0}, {"temperature": 2.0, "top_p": 1.0}),
    ({"seed": -1}, {"seed": 2**64 - 1}),  # as torch reads a negative seed
    ({"seed": -I64}, {"seed": I64}),
    ({"seed": I64 - 1}, {"seed": I64 - 1}),
    ({"top_k": -1}, {"top_k": 0}),  # vLLM's "off"
    ({"top_k": U32 - 1}, {"top_k": U32 - 1}),
    ({"max_tokens": 4.0, "min_tokens": 4.0}, {"max_tokens": 4, "min_tokens": 4}),  # 4.0 is 4
    ({"stop": ["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS}, {}),
    ({"n": 1, "logit_bias": {}, "presence_penalty": 0, "best_of": 1, "logprobs": 1}, {}),
    # logit changes (float32 on the wire: values a float32 holds exactly)
    ({"presence_penalty": -2, "frequency_penalty": 2}, {"presence_penalty": -2}),
    ({"frequency_penalty": 1.5}, {"frequency_penalty": 1.5}),
    ({"repetition_penalty": 1.25, "min_p": 0.5}, {"repetition_penalty": 1.25, "min_p": 0.5}),
    ({"repetition_penalty": 2}, {"repetition_penalty": 2.0}),
    ({"logit_bias": {"0": -100, str(VOCAB - 1): 100.0}}, {"logit_bias": ((0, -100.0), (VOCAB - 1, 100.0))}),  # noqa: E501
    ({"stop_token_ids": [0, 2.0, VOCAB - 1]}, {"stop_token_ids": (0, 2, VOCAB - 1)}),
    ({"prompt": [0.0, VOCAB - 1]}, {}),
    ({"prompt": [[0.0, 1], [2.0]]}, {}),
    # A temperature too small to divide by is greedy (as vLLM's below 1e-5); the smallest
    # positive top_p the float32 on the wire holds keeps the top token, as any smaller one.
    ({"temperature": 1e-300}, {"temperature": 0.0}),
    ({"temperature": MIN_TEMPERATURE}, {"temperature": MIN_TEMPERATURE}),
    ({"top_p": 5e-324}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("body", "want"), ACCEPTED)
def test_the_edges_are_accepted_and_cross_the_wire_intact(
    body: dict[str, Any], want: dict[str, Any]
) -> None:
    r, backend = _post(CMPL, body)
    assert r.status_code == 200, r.text
    params = backend.requests[0].params
    assert {k: getattr(params, k) for k in want} == want
    assert params_from_pb(params_to_pb(params)).top_p > 0  # the worker takes what we send
    assert params_from_pb(params_to_pb(params)).greedy == params.greedy


def test_chat_edges() -> None:
    body = {"max_completion_tokens": 2.0, "top_logprobs": 0, "tools": [], "logprobs": True}
    r, backend = _post(CHAT, {**body, "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text
    assert backend.requests[0].params.max_tokens == 2


# ---- the engine's own guard, for callers other than the router ---------------------------
def test_a_temperature_too_small_to_divide_by_is_refused_by_the_engine() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=1e-40)
    # At the smallest accepted one, large logits still make a distribution (no inf, no nan).
    logits = torch.zeros(1, 64)
    logits[0, 7] = 1000.0
    row = SampleRow(SamplingParams(temperature=MIN_TEMPERATURE), torch.Generator())
    assert sample(logits, [row])[0] == [7]


# ---- the schema says the same ------------------------------------------------------------
def _schema() -> dict[str, Any]:
    app = create_app(ScriptedBackend([]), TOKENIZER, MODEL, 256, RouterMetrics(MODEL))
    r = asyncio.run(_get(app))
    assert r.status_code == 200
    return dict(r.json()["components"]["schemas"])


async def _get(app: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        return await http.get("/openapi.json")


def _branch(prop: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == kind)


def test_the_openapi_schema_states_the_limits() -> None:
    schemas = _schema()
    cmpl = schemas["CompletionRequest"]["properties"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    # Exact integers (FastAPI would write 1.0, and 9.223372036854776e+18 for 2**63).
    assert _branch(cmpl["seed"], "integer") == {
        "type": "integer", "minimum": -I64, "exclusiveMaximum": I64
    }  # fmt: skip
    assert (cmpl["top_k"]["minimum"], cmpl["top_k"]["exclusiveMaximum"]) == (-1, U32)
    assert (cmpl["min_tokens"]["minimum"], cmpl["min_tokens"]["exclusiveMaximum"]) == (0, U32)
    assert _branch(cmpl["max_tokens"], "integer")["minimum"] == 1
    assert (cmpl["temperature"]["minimum"], cmpl["temperature"]["maximum"]) == (0, 2)
    assert (cmpl["top_p"]["exclusiveMinimum"], cmpl["top_p"]["maximum"]) == (0, 1)
    stop = cmpl["stop"]["anyOf"]
    assert stop[0] == {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
    assert stop[1]["maxItems"] == MAX_STOP_STRINGS and stop[1]["items"] == stop[0]
    # Token ids: below the served vocabulary.
    ids = _branch(cmpl["prompt"], "array")["items"]
    assert (ids["minimum"], ids["exclusiveMaximum"]) == (0, VOCAB)
    assert "x-below-vocab-size" not in ids  # the marker is filled in, not served
    # What we serve of what OpenAI defines more widely.
    assert (cmpl["n"]["minimum"], cmpl["n"]["maximum"]) == (1, MAX_N)
    prompts = [b for b in cmpl["prompt"]["anyOf"] if b["type"] == "array"]
    assert [b.get("maxItems") for b in prompts] == [None, MAX_PROMPTS, MAX_PROMPTS]
    assert (cmpl["presence_penalty"]["minimum"], cmpl["presence_penalty"]["maximum"]) == (-2, 2)
    assert (cmpl["frequency_penalty"]["minimum"], cmpl["frequency_penalty"]["maximum"]) == (-2, 2)
    rep = cmpl["repetition_penalty"]
    assert (rep["minimum"], rep["maximum"]) == (MIN_REPETITION_PENALTY, 2)
    bias = _branch(cmpl["logit_bias"], "object")
    assert bias["maxProperties"] == MAX_LOGIT_BIAS
    assert (bias["additionalProperties"]["minimum"], bias["additionalProperties"]["maximum"]) == (
        -100,
        100,
    )
    stop_ids = _branch(cmpl["stop_token_ids"], "array")
    assert stop_ids["maxItems"] == MAX_STOP_TOKEN_IDS
    assert stop_ids["items"]["exclusiveMaximum"] == VOCAB
    assert _branch(cmpl["logprobs"], "integer")["maximum"] == 5
    assert cmpl["echo"]["type"] == "boolean"
    assert _branch(chat["top_logprobs"], "integer")["maximum"] == MAX_TOP_LOGPROBS
    assert _branch(chat["tools"], "array")["maxItems"] == MAX_TOOLS


def test_a_union_error_names_the_member_whose_type_matched() -> None:
    # stop=[""] fails `str` (wrong type) and `list[str]` (too short): the second says why.
    for stop, words in (([""], "at least 1 character"), ("x" * 300, "at most 256")):
        with pytest.raises(ValidationError) as e:
            CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": stop})
        err = validation_error(e.value.errors())
        assert err.param == "stop" and words in err.message, err.message
