"""Tool calls in a model's own output format (`--tool-call-parser`, vLLM's flag), found in
the router's text as it streams.

    hermes        <tool_call>{"name": "f", "arguments": {...}}</tool_call>  (Qwen, Hermes,
                  SmolLM-style templates), one block per call, text before them is content
    llama3_json   {"name": "f", "parameters": {...}} as the whole answer (after an optional
                  <|python_tag|>), several separated by ";"
    minimax_m2    <minimax:tool_call><invoke name="f"><parameter name="x">v</parameter>
                  </invoke></minimax:tool_call>, values typed by the tool's JSON schema

A parser sees the text a piece at a time and says what of it is plain content now, what
it holds back (the start of a call, or what may become one), and which calls are complete.
Malformed calls come back as plain content, never as an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.router.held_text import marker_start_at_end


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it


@dataclass(frozen=True, slots=True)
class CallOut:
    """A call as a response carries it: its place among the choice's calls, and its id."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Parsed:
    """What a piece of text adds: content to send now, and calls completed."""

    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class ToolParser(Protocol):
    def feed(self, text: str, final: bool = False) -> Parsed: ...


Schemas = Mapping[str, Mapping[str, Any]]  # a tool's name -> its parameters' JSON schema


def json_object(text: str) -> dict[str, Any] | None:
    try:
        got = json.loads(text)
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


class _Tagged:
    """Calls between a start and an end marker, content around them."""

    start = ""
    end = ""

    def __init__(self, schemas: Schemas) -> None:
        self._schemas = schemas
        self._buf = ""  # text not yet sent: a call being read, or a marker's beginning
        self._in_call = False

    def feed(self, text: str, final: bool = False) -> Parsed:
        out = Parsed()
        self._buf += text
        while True:
            if not self._in_call:
                head, sep, tail = self._buf.partition(self.start)
                if not sep:
                    keep = 0 if final else marker_start_at_end(self._buf, self.start)
                    out.content += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    return out
                out.content += head
                self._buf, self._in_call = tail, True
            body, sep, tail = self._buf.partition(self.end)
            if not sep:
                if final:  # a call never closed: the text as it was
                    out.content += self.start + self._buf
                    self._buf = ""
                return out
            calls = self._calls(body)
            if calls is None:  # malformed: plain text
                out.content += self.start + body + self.end
            else:
                out.calls += calls
            self._buf, self._in_call = tail, False

    def _calls(self, body: str) -> list[ToolCall] | None:
        """The calls between one pair of markers; None where they are malformed."""
        raise NotImplementedError


class HermesParser(_Tagged):
    start, end = "<tool_call>", "</tool_call>"

    def _calls(self, body: str) -> list[ToolCall] | None:
        got = json_object(body.strip())
        if got is None or not isinstance(got.get("name"), str):
            return None
        args = got.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as JSON text
            args = json_object(args)
        if not isinstance(args, dict):
            return None
        return [ToolCall(got["name"], json.dumps(args, ensure_ascii=False))]


_INVOKE = re.compile(r'<invoke name="([^"]+)">(.*?)</invoke>', re.S)
_PARAM = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.S)


class MiniMaxM2Parser(_Tagged):
    start, end = "<minimax:tool_call>", "</minimax:tool_call>"

    def _calls(self, body: str) -> list[ToolCall] | None:
        invokes = _INVOKE.findall(body)
        if not invokes or _INVOKE.sub("", body).strip():
            return None
        calls = []
        for name, params in invokes:
            schema = self._schemas.get(name, {}).get("properties", {})
            args = {k: _typed(v.strip(), schema.get(k, {})) for k, v in _PARAM.findall(params)}
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return calls


class Llama3JsonParser:
    """The whole answer is the calls, or none of it is: text that starts as JSON is held
    to the end, anything else is content as it comes."""

    _TAG = "<|python_tag|>"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""
        self._json: bool | None = None  # undecided until the answer's first characters

    def feed(self, text: str, final: bool = False) -> Parsed:
        self._buf += text
        if self._json is None:
            lead = self._buf.lstrip()
            if lead.startswith(("{", self._TAG)):
                self._json = True
            elif lead and not self._TAG.startswith(lead):
                self._json = False
            elif not final:
                return Parsed()
        if not self._json:
            out, self._buf = Parsed(self._buf), ""
            return out
        if not final:
            return Parsed()
        calls = _llama3_calls(self._buf.strip().removeprefix(self._TAG))
        return Parsed(calls=calls) if calls is not None else Parsed(self._buf)


def _llama3_calls(text: str) -> list[ToolCall] | None:
    calls = []
    for part in text.split(";"):
        got = json_object(part.strip())
        args = None if got is None else got.get("parameters", got.get("arguments"))
        if got is None or not isinstance(got.get("name"), str) or not isinstance(args, dict):
            return None
        calls.append(ToolCall(got["name"], json.dumps(args, ensure_ascii=False)))
    return calls


PARSERS: dict[str, Callable[[Schemas], ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "minimax_m2": MiniMaxM2Parser,
}


def _typed(value: str, schema: Mapping[str, Any]) -> Any:
    """A parameter's text as its schema's type (text where it does not parse)."""
    kind = schema.get("type")
    if kind in ("integer", "number", "boolean", "object", "array", "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
