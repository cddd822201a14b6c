"""Tool-call parsers (services/router/tool_parsers.py) on recorded model outputs, whole and
streamed in pieces cut anywhere: the calls and the content must not depend on the cuts, and
a malformed call comes back as plain content."""

from __future__ import annotations

import json

import pytest

from services.router.tool_parsers import PARSERS, ToolCall

WEATHER = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}
TYPED = {
    "book": {
        "type": "object",
        "properties": {
            "seats": {"type": "integer"},
            "window": {"type": "boolean"},
            "price": {"type": "number"},
            "note": {"type": "string"},
            "tags": {"type": "array"},
        },
    }
}


def _call(name: str, **args: object) -> ToolCall:
    return ToolCall(name, json.dumps(args))


# (parser, schemas, output, content, calls): outputs in the shapes the models write
CASES = [
    (  # Qwen2.5 / Hermes: text, then a call
        "hermes",
        WEATHER,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
        "Let me check.\n",
        [_call("get_weather", city="Paris")],
    ),
    (  # two calls in a row, arguments as JSON text (some models write them so)
        "hermes",
        WEATHER,
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>',
        "\n",
        [_call("get_weather", city="Oslo"), _call("get_weather", city="Rome")],
    ),
    ("hermes", WEATHER, "No tools needed: it is sunny.", "No tools needed: it is sunny.", []),
    (  # malformed JSON: plain content, nothing lost
        "hermes",
        WEATHER,
        '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call> ok',
        '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call> ok',
        [],
    ),
    (  # never closed (cut by max_tokens): plain content
        "hermes",
        WEATHER,
        'Sure <tool_call>{"name": "get_wea',
        'Sure <tool_call>{"name": "get_wea',
        [],
    ),
    ("hermes", WEATHER, "a <tool_ca", "a <tool_ca", []),  # a marker's start, then the end
    (  # Llama 3.1: the whole answer is the calls
        "llama3_json",
        WEATHER,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima"}}',
        "",
        [_call("get_weather", city="Lima")],
    ),
    (
        "llama3_json",
        WEATHER,
        '{"name": "get_weather", "parameters": {"city": "Kyiv"}}; '
        '{"name": "get_weather", "arguments": {"city": "Riga"}}',
        "",
        [_call("get_weather", city="Kyiv"), _call("get_weather", city="Riga")],
    ),
    ("llama3_json", WEATHER, "It is sunny in Lima.", "It is sunny in Lima.", []),
    ("llama3_json", WEATHER, '{"not": "a call"}', '{"not": "a call"}', []),
    (  # MiniMax-M2: XML-style invokes, values typed by the tool's schema
        "minimax_m2",
        TYPED,
        'Booking now.\n<minimax:tool_call>\n<invoke name="book">\n'
        '<parameter name="seats">2</parameter>\n<parameter name="window">true</parameter>\n'
        '<parameter name="price">9.5</parameter>\n<parameter name="note">aisle, 12</parameter>\n'
        '<parameter name="tags">["a", "b"]</parameter>\n</invoke>\n'
        '<invoke name="book">\n<parameter name="seats">x</parameter>\n</invoke>\n'
        "</minimax:tool_call>",
        "Booking now.\n",
        [
            _call("book", seats=2, window=True, price=9.5, note="aisle, 12", tags=["a", "b"]),
            _call("book", seats="x"),  # not an integer: kept as the model wrote it
        ],
    ),
    (
        "minimax_m2",
        TYPED,
        "<minimax:tool_call>\nnot an invoke\n</minimax:tool_call>",
        "<minimax:tool_call>\nnot an invoke\n</minimax:tool_call>",
        [],
    ),
]


def _parse(name: str, schemas: dict[str, object], pieces: list[str]) -> tuple[str, list[ToolCall]]:
    parser = PARSERS[name](schemas)  # type: ignore[arg-type]
    content, calls = "", []
    for i, piece in enumerate(pieces):
        got = parser.feed(piece, final=i == len(pieces) - 1)
        content += got.content
        calls += got.calls
    return content, calls


@pytest.mark.parametrize(("name", "schemas", "text", "content", "calls"), CASES)
def test_recorded_outputs_whole(
    name: str, schemas: dict[str, object], text: str, content: str, calls: list[ToolCall]
) -> None:
    assert _parse(name, schemas, [text]) == (content, calls)


@pytest.mark.parametrize(("name", "schemas", "text", "content", "calls"), CASES)
def test_recorded_outputs_streamed_cut_anywhere(
    name: str, schemas: dict[str, object], text: str, content: str, calls: list[ToolCall]
) -> None:
    want = (content, calls)
    assert _parse(name, schemas, list(text) + [""]) == want
    for i in range(len(text) + 1):
        assert _parse(name, schemas, [text[:i], text[i:]]) == want, i


def test_content_before_a_call_streams_at_once_and_the_call_when_it_closes() -> None:
    parser = PARSERS["hermes"](WEATHER)
    assert parser.feed("Checking").content == "Checking"
    assert parser.feed(" now <tool_").content == " now "  # the marker's start is held
    got = parser.feed('call>{"name": "get_weather", "arguments": {"city": "Bern"}}')
    assert (got.content, got.calls) == ("", [])  # a call in progress is held whole
    assert parser.feed("</tool_call>").calls == [_call("get_weather", city="Bern")]
