"""Tool calling at the router's edge: what `tool_choice` asks of the model, and the calls
taken out of each choice's text as it streams.

    tool_choice   the model's output                       read by
    none          text (tools still in the prompt)          -
    auto          its own format, e.g. <tool_call>...       --tool-call-parser (tool_parsers.py)
    required      a JSON array of {"name", "arguments"}     RequiredCalls (enforced: structured
                                                            output on every token)
    {"function"}  that function's arguments, as JSON        NamedCall (enforced the same way)

As vLLM does, `required` and a named function are held to a JSON schema (any model can
follow it), and `auto` is read in the model's own format (only the model knows when to
call). A choice that called a tool ends with finish_reason "tool_calls".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from engine.sampling_params import GuidedSpec
from services.router.errors import APIError
from services.router.generation import Piece
from services.router.protocol import ChatCompletionRequest
from services.router.tool_bodies import NamedToolChoice, ToolDef
from services.router.tool_parsers import (
    PARSERS,
    CallOut,
    Parsed,
    Schemas,
    ToolCall,
    ToolParser,
    json_object,
)

ParserFactory = Callable[[], ToolParser]


def tool_choice_spec(body: ChatCompletionRequest) -> GuidedSpec | None:
    """The JSON schema `required` or a named function holds the output to; None for the
    others (structured.py counts it as one more structured output)."""
    choice = body.tool_choice
    if not body.tools:
        return None
    if isinstance(choice, NamedToolChoice):
        return GuidedSpec("json_schema", json.dumps(_parameters(body, choice.function.name)))
    if choice != "required":
        return None
    calls: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": [_call_schema(t) for t in body.tools]},
    }
    if not body.parallel_tool_calls:
        calls["maxItems"] = 1
    return GuidedSpec("json_schema", json.dumps(calls))


def _call_schema(tool: ToolDef) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _parameters(body: ChatCompletionRequest, name: str) -> dict[str, Any]:
    for t in body.tools or ():
        if t.function.name == name:
            return t.function.parameters or {"type": "object"}
    raise APIError(400, f"tool_choice names {name!r}, which is not in tools.", param="tool_choice")


def tool_parsers(body: ChatCompletionRequest, auto_parser: str | None) -> ParserFactory | None:
    """How each choice's calls are read, or None where the answer is plain text."""
    choice = body.tool_choice
    if not body.tools or choice == "none":
        return None
    schemas: Schemas = {t.function.name: t.function.parameters or {} for t in body.tools}
    if choice == "required":
        return RequiredCalls
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        return lambda: NamedCall(name)
    if auto_parser is None:
        raise APIError(
            400,
            'tool_choice "auto" needs the server started with --tool-call-parser; or ask '
            'for "required" or a named function, which any model can follow.',
            param="tool_choice",
        )
    parser = PARSERS[auto_parser]
    return lambda: parser(schemas)


class RequiredCalls:
    """The whole output is a JSON array of calls (held to it by its schema)."""

    def __init__(self) -> None:
        self._text = ""

    def feed(self, text: str, final: bool = False) -> Parsed:
        self._text += text
        if not final:
            return Parsed()
        try:
            got = json.loads(self._text)
        except ValueError:  # cut off by max_tokens: what there is, as text
            return Parsed(self._text)
        if not isinstance(got, list) or not all(_is_call(c) for c in got):
            return Parsed(self._text)  # not the schema's shape (a backend that ignored it)
        calls = [ToolCall(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in got]
        return Parsed(calls=calls)


def _is_call(c: Any) -> bool:
    return isinstance(c, dict) and isinstance(c.get("name"), str) and "arguments" in c


class NamedCall:
    """The whole output is the named function's arguments (held to them by their schema)."""

    def __init__(self, name: str) -> None:
        self._name, self._text = name, ""

    def feed(self, text: str, final: bool = False) -> Parsed:
        self._text += text
        if not final:
            return Parsed()
        if json_object(self._text) is None:  # cut off by max_tokens
            return Parsed(self._text)
        return Parsed(calls=[ToolCall(self._name, self._text)])


async def extract_tool_calls(
    pieces: AsyncIterator[Piece], parser: ToolParser
) -> AsyncIterator[Piece]:
    """`pieces` with the calls in their text moved to their `tool_calls`, each with its
    index and id; the last says "tool_calls" where any call was made."""
    made = 0
    try:
        async for piece in pieces:
            final = piece.finish_reason is not None
            got = parser.feed(piece.text, final)
            piece.text = got.content
            piece.tool_calls = [
                CallOut(made + i, f"call_{uuid.uuid4().hex[:24]}", c.name, c.arguments)
                for i, c in enumerate(got.calls)
            ]
            made += len(got.calls)
            if final and made and piece.finish_reason == "stop":
                piece.finish_reason = "tool_calls"
            yield piece
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # closing: the abort
