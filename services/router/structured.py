"""Structured output at the router's edge: OpenAI's `response_format` and vLLM's `guided_*`
and `structured_outputs` fields as the engine's GuidedSpec (engine/guided.py enforces it),
checked here so that a schema or regex that cannot be enforced is a 400 naming its field
before any worker sees it."""

from __future__ import annotations

import json
from typing import Any

from engine.grammar import check
from engine.sampling_params import GuidedSpec
from services.router.errors import APIError
from services.router.protocol import ChatCompletionRequest, SamplingBody, StructuredOutputs
from services.router.tools import tool_choice_spec


def guided_spec(body: SamplingBody) -> GuidedSpec | None:
    """The one structured-output request of `body`, or None. Two at once are refused."""
    asked = [(name, spec) for name, spec in _asked(body) if spec is not None]
    if len(asked) > 1:
        names = " and ".join(name for name, _ in asked)
        raise APIError(
            400, f"Ask for one structured output at a time, not {names}.", param=asked[1][0]
        )
    if not asked:
        return None
    name, spec = asked[0]
    try:
        check(spec)
    except ValueError as e:
        raise APIError(400, f"{name}: {e}", param=name) from None
    return spec


def _asked(body: SamplingBody) -> list[tuple[str, GuidedSpec | None]]:
    fields: list[tuple[str, GuidedSpec | None]] = [
        ("guided_json", _json_spec(body.guided_json, "guided_json")),
        ("guided_regex", GuidedSpec("regex", body.guided_regex) if body.guided_regex else None),
        ("guided_choice", _choice_spec(body.guided_choice)),
        ("guided_grammar", _grammar_spec(body.guided_grammar)),
        ("structured_outputs", _structured_outputs(body.structured_outputs)),
    ]
    if isinstance(body, ChatCompletionRequest):
        fields.append(("response_format", _response_format(body.response_format)))
        fields.append(("tool_choice", tool_choice_spec(body)))
    return fields


def _response_format(fmt: dict[str, Any] | None) -> GuidedSpec | None:
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedSpec("json_object")
    if kind == "json_schema":
        schema = (fmt or {}).get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema", {}), dict):
            raise APIError(
                400,
                "response_format json_schema needs a json_schema object with a schema.",
                param="response_format",
            )
        return GuidedSpec("json_schema", json.dumps(schema.get("schema", {})))
    raise APIError(
        400,
        f"response_format type must be text, json_object or json_schema, got {kind!r}.",
        param="response_format",
    )


def _json_spec(schema: dict[str, Any] | str | None, param: str) -> GuidedSpec | None:
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise APIError(400, f"{param} must be a JSON schema.", param=param) from None
    if not isinstance(schema, dict):
        raise APIError(400, f"{param} must be a JSON schema (an object).", param=param)
    return GuidedSpec("json_schema", json.dumps(schema))


def _choice_spec(choices: list[str] | None, param: str = "guided_choice") -> GuidedSpec | None:
    if choices is None:
        return None
    if not choices:
        raise APIError(400, f"{param} needs at least one choice.", param=param)
    return GuidedSpec("choice", json.dumps(choices))


def _grammar_spec(text: str | None) -> GuidedSpec | None:
    return GuidedSpec("grammar", text) if text else None


def _structured_outputs(so: StructuredOutputs | None) -> GuidedSpec | None:
    """vLLM's newer form: {"json": schema} | {"regex": r} | {"choice": [...]} |
    {"grammar": g}."""
    if so is None:
        return None
    param = "structured_outputs"
    asked = [v for v in (so.json_schema, so.regex, so.choice, so.grammar) if v is not None]
    if len(asked) != 1:
        raise APIError(
            400, f"{param} takes exactly one of json, regex, choice or grammar.", param=param
        )
    if so.json_schema is not None:
        return _json_spec(so.json_schema, param)
    if so.regex is not None:
        return GuidedSpec("regex", so.regex)
    if so.grammar is not None:
        return _grammar_spec(so.grammar)
    return _choice_spec(so.choice, param)
