"""Tool calling's request side and its readers (services/router/tools.py, protocol.py): the
schemas `required` and a named function are held to, which reader each tool_choice gets,
the messages that carry calls and results, and calls moved out of streamed pieces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from services.router.errors import APIError
from services.router.generation import Piece
from services.router.protocol import ChatCompletionRequest
from services.router.tool_parsers import HermesParser, ToolCall
from services.router.tools import (
    NamedCall,
    RequiredCalls,
    extract_tool_calls,
    tool_choice_spec,
    tool_parsers,
)

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "ping"}},
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _body(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, **kw})


def test_required_and_named_are_json_schemas_and_the_others_none() -> None:
    required = tool_choice_spec(_body(tools=TOOLS, tool_choice="required"))
    assert required is not None and required.kind == "json_schema"
    schema = json.loads(required.spec)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [s["properties"]["name"]["const"] for s in schema["items"]["anyOf"]]
    assert names == ["get_weather", "ping"]
    assert schema["items"]["anyOf"][0]["properties"]["arguments"] == PARAMS
    assert schema["items"]["anyOf"][1]["properties"]["arguments"] == {"type": "object"}
    one = tool_choice_spec(_body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False))
    assert one is not None and json.loads(one.spec)["maxItems"] == 1
    named = {"type": "function", "function": {"name": "get_weather"}}
    spec = tool_choice_spec(_body(tools=TOOLS, tool_choice=named))
    assert spec is not None and json.loads(spec.spec) == PARAMS
    for choice in ("auto", "none", None):
        assert tool_choice_spec(_body(tools=TOOLS, tool_choice=choice)) is None
    assert tool_choice_spec(_body()) is None


def test_each_tool_choice_gets_its_reader() -> None:
    assert tool_parsers(_body(), "hermes") is None  # no tools: plain text
    assert tool_parsers(_body(tools=TOOLS, tool_choice="none"), "hermes") is None
    auto = tool_parsers(_body(tools=TOOLS), "hermes")  # auto is the default with tools
    assert auto is not None and isinstance(auto(), HermesParser)
    required = tool_parsers(_body(tools=TOOLS, tool_choice="required"), None)
    assert required is not None and isinstance(required(), RequiredCalls)
    with pytest.raises(APIError) as e:
        tool_parsers(_body(tools=TOOLS), None)
    assert e.value.param == "tool_choice" and "--tool-call-parser" in e.value.message
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(APIError) as e:
        tool_choice_spec(_body(tools=TOOLS, tool_choice=unknown))
    assert e.value.param == "tool_choice"


def test_whole_outputs_of_required_and_named() -> None:
    required = RequiredCalls()
    assert required.feed('[{"name": "ping", "arguments": {}}, ').calls == []  # held
    got = required.feed('{"name": "get_weather", "arguments": {"city": "Oslo"}}]', final=True)
    assert got.calls == [ToolCall("ping", "{}"), ToolCall("get_weather", '{"city": "Oslo"}')]
    assert RequiredCalls().feed('[{"name": "pi', final=True).content == '[{"name": "pi'
    for off_schema in ("[1]", '{"name": "ping"}', '[{"arguments": {}}]'):  # text, not a 500
        assert RequiredCalls().feed(off_schema, final=True).content == off_schema
    assert NamedCall("get_weather").feed('{"city": "Rome"}', final=True).calls == [
        ToolCall("get_weather", '{"city": "Rome"}')
    ]
    assert NamedCall("get_weather").feed('{"city": "Ro', final=True).content == '{"city": "Ro'


def test_messages_carry_calls_and_results_to_the_template() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
    body = _body(
        tools=TOOLS,
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "pong"},
        ],
    )
    assistant, tool = body.chat()[1:]
    assert assistant["content"] == "" and assistant["tool_calls"][0]["function"] == {
        "name": "ping",
        "arguments": {},  # an object, as chat templates take it
    }
    assert tool == {"role": "tool", "content": "pong", "tool_call_id": "call_1"}
    assert body.template_tools() == TOOLS
    for bad in (
        {"role": "user", "content": None},  # content is required
        {"role": "user", "content": "x", "tool_calls": [call]},  # calls are the assistant's
    ):
        with pytest.raises(ValidationError):
            _body(messages=[bad])
    with pytest.raises(APIError) as e:
        _body(tool_choice="required").check_supported()  # nothing to choose from
    assert e.value.param == "tool_choice"


def test_calls_move_out_of_the_pieces_and_the_finish_says_so() -> None:
    texts = ["Sure. <tool_", 'call>{"name": "ping", "arguments": {}}</tool_call>', ""]

    async def pieces() -> AsyncIterator[Piece]:
        for i, t in enumerate(texts):
            yield Piece(t, [i], [0.0], "stop" if i == len(texts) - 1 else None)

    async def run() -> list[Piece]:
        return [p async for p in extract_tool_calls(pieces(), HermesParser({}))]

    out = asyncio.run(run())
    assert [p.text for p in out] == ["Sure. ", "", ""]
    (call,) = out[1].tool_calls
    assert (call.index, call.name, call.arguments) == (0, "ping", "{}")
    assert call.id.startswith("call_") and len(call.id) == 29
    assert out[-1].finish_reason == "tool_calls"
