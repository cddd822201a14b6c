"""Tool calling over real HTTP (uvicorn on 127.0.0.1) with the official `openai` client, in
front of the default model (float32), whose chat template is swapped for one that renders
tools (SmolLM2's own leaves them out): a named function and `required` held to their JSON
schemas, `auto` read by the hermes parser, a round trip with the tool's result sent back,
streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from engine import Engine
from engine.tokenizer import Tokenizer, load_tokenizer
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from tests.helpers.asgi_server import serve
from tests.helpers.engine_backend import EngineBackend, engine_state

pytestmark = pytest.mark.slow

MODEL = "smol"
# ChatML with a tools section and Hermes-style calls and results.
TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n"
    "{% for t in tools %}{{ t.function | tojson }}\n{% endfor %}"
    'Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>\n'
    "{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n"
    "<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 60}
HERMES_CALL = (
    r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,9}"\}\}</tool_call>'
)


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    tok = load_tokenizer(smollm_path)
    tok.use_chat_template(TEMPLATE)
    return tok


@pytest.fixture(scope="module")
def backend(smollm_f32: Engine) -> Iterator[EngineBackend]:
    b = EngineBackend(smollm_f32)
    yield b
    assert b.call(engine_state) == {"unfinished": False, "idle": True}
    b.close()


def _client(
    backend: EngineBackend, tokenizer: Tokenizer, parser: str | None
) -> Iterator[openai.OpenAI]:
    app = create_app(backend, tokenizer, MODEL, 2048, RouterMetrics(MODEL), tool_parser=parser)
    with serve(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[openai.OpenAI]:
    yield from _client(backend, tokenizer, "hermes")


@pytest.fixture(scope="module")
def no_parser(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[openai.OpenAI]:
    yield from _client(backend, tokenizer, None)


def _streamed_calls(client: openai.OpenAI, **kw: Any) -> tuple[list[dict[str, str]], str, str]:
    """The calls a stream's deltas add up to (OpenAI's way: the first delta of a call
    brings its id and name, later ones more of its arguments), its content and finish."""
    calls: dict[int, dict[str, str]] = {}
    content, finish = "", ""
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                if d.function is not None:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], content, finish


def test_a_named_function_round_trip(client: openai.OpenAI) -> None:
    got = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, **GREEDY
    )
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    # streamed, the same call arrives as deltas
    calls, content, finish = _streamed_calls(
        client, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, **GREEDY
    )
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (call.function.name, call.function.arguments)
    ]
    assert content == "" and finish == "tool_calls" and calls[0]["id"].startswith("call_")
    # the tool's result goes back, and the model answers in words
    back = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "c": 21}'},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=back, tools=[WEATHER, TIME], tool_choice="none", **GREEDY
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.usage is not None and got.usage is not None
    assert final.usage.prompt_tokens > got.usage.prompt_tokens + 20  # the call and result


def test_required_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    got = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", **GREEDY
    )
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        args = json.loads(call.function.arguments)
        assert (call.function.name, set(args)) in (
            ("get_weather", {"city"}),
            ("get_time", {"zone"}),
        )
    one = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        **GREEDY,
    )
    assert len(one.choices[0].message.tool_calls or []) == 1


def test_auto_reads_the_models_own_format(client: openai.OpenAI) -> None:
    # The model writes a Hermes call (held to it by a regex: a 135M model seldom would).
    kw = {"messages": ASK, "tools": [WEATHER], "extra_body": {"guided_regex": HERMES_CALL}}
    got = client.chat.completions.create(model=MODEL, **kw, **GREEDY)
    choice = got.choices[0]
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and choice.finish_reason == "tool_calls"
    assert set(json.loads(call.function.arguments)) == {"city"}
    calls, content, finish = _streamed_calls(client, **kw, **GREEDY)
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (call.function.name, call.function.arguments)
    ]
    assert (content, finish) == ("", "tool_calls")
    # no call in the answer: plain content, finish as usual
    plain = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], **GREEDY)
    assert plain.choices[0].message.content and not plain.choices[0].message.tool_calls


def test_refusals_name_tool_choice(client: openai.OpenAI, no_parser: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="--tool-call-parser") as auto:
        no_parser.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], **GREEDY)
    assert auto.value.param == "tool_choice"
    unknown = {"type": "function", "function": {"name": "get_stock_price"}}
    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=unknown, **GREEDY
        )
    assert missing.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required", **GREEDY)
    assert no_tools.value.param == "tool_choice"
    # a named call still works without a parser: the schema holds the output
    named = no_parser.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, **GREEDY
    )
    assert named.choices[0].message.tool_calls
