"""Structured output's request forms at the router (services/router/structured.py): each
becomes the engine's GuidedSpec, and what cannot be enforced is a 400 naming its field
before any worker is asked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.sampling_params import GuidedSpec
from tests.unit.test_router_app import ScriptedBackend, _chat_body, _deltas, _post

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
CHAT, CMPL = "/v1/chat/completions", "/v1/completions"
LARK = 'start: "x" NUM\nNUM: /[0-9]+/'
GBNF = 'root ::= "x" [0-9]+'
STRICT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}

ASKED: list[tuple[str, dict[str, Any], GuidedSpec | None]] = [
    (CHAT, {"response_format": {"type": "text"}}, None),
    (CHAT, {"response_format": {"type": "json_object"}}, GuidedSpec("json_object")),
    (CHAT, {"response_format": STRICT}, GuidedSpec("json_schema", json.dumps(SCHEMA))),
    (CMPL, {"guided_json": SCHEMA}, GuidedSpec("json_schema", json.dumps(SCHEMA))),
    (CMPL, {"guided_json": json.dumps(SCHEMA)}, GuidedSpec("json_schema", json.dumps(SCHEMA))),
    (CMPL, {"guided_regex": "[a-z]+"}, GuidedSpec("regex", "[a-z]+")),
    (CMPL, {"guided_choice": ["a", "b"]}, GuidedSpec("choice", '["a", "b"]')),
    (CMPL, {"structured_outputs": {"choice": ["a"]}}, GuidedSpec("choice", '["a"]')),
    (CMPL, {"structured_outputs": {"regex": "x+"}}, GuidedSpec("regex", "x+")),
    (CMPL, {"structured_outputs": {"json": SCHEMA}}, GuidedSpec("json_schema", json.dumps(SCHEMA))),
    (CMPL, {"guided_grammar": LARK}, GuidedSpec("grammar", LARK)),
    (CMPL, {"guided_grammar": GBNF}, GuidedSpec("grammar", GBNF)),
    (CMPL, {"structured_outputs": {"grammar": LARK}}, GuidedSpec("grammar", LARK)),
]  # fmt: skip


def _body(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    return _chat_body(**fields) if path == CHAT else {"prompt": "x", "max_tokens": 4, **fields}


@pytest.mark.parametrize(("path", "fields", "want"), ASKED)
def test_each_form_reaches_the_engine_as_its_spec(
    path: str, fields: dict[str, Any], want: GuidedSpec | None
) -> None:
    backend = ScriptedBackend(_deltas("ok"))
    r = _post(backend, path, _body(path, fields))
    assert r.status_code == 200, r.text
    assert backend.requests[0].params.guided == want


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (CHAT, {"response_format": {"type": "yaml"}}, "response_format"),
    (CHAT, {"response_format": {"type": "json_schema"}}, "response_format"),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}, "response_format"),  # noqa: E501
    (CMPL, {"guided_regex": "(unclosed"}, "guided_regex"),
    (CMPL, {"guided_json": "{not json"}, "guided_json"),
    (CMPL, {"guided_json": {"type": "nonsense"}}, "guided_json"),
    (CMPL, {"guided_choice": []}, "guided_choice"),
    (CMPL, {"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),  # one at a time
    (CMPL, {"structured_outputs": {"grammar": "start: x"}}, "structured_outputs"),  # no rule x
    (CMPL, {"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
    (CMPL, {"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    (CMPL, {"guided_grammar": "start: x"}, "guided_grammar"),  # no rule x
    (CMPL, {"guided_grammar": "root ::= [unclosed"}, "guided_grammar"),
    (CMPL, {"guided_grammar": LARK, "guided_regex": "x"}, "guided_grammar"),  # one at a time
]  # fmt: skip


@pytest.mark.parametrize(("path", "fields", "param"), REFUSED)
def test_what_cannot_be_enforced_is_a_400_naming_its_field(
    path: str, fields: dict[str, Any], param: str
) -> None:
    backend = ScriptedBackend(_deltas("ok"))
    r = _post(backend, path, _body(path, fields))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert not backend.requests
