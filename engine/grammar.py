"""Structured output's grammars: a GuidedSpec (engine/sampling_params.py) as llguidance's
grammar text, checked. No torch: the router checks a request's grammar with it before any
worker sees the request; engine/guided.py enforces it on the tokens."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

from engine.sampling_params import GuidedSpec

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON, no whitespace between tokens (vLLM's disable_any_whitespace): with any
# whitespace allowed, a small model can spend its whole budget on newlines and indents.
_JSON: JsonCompileOptions = {"whitespace_flexible": False}


@lru_cache(maxsize=256)  # a client sends the same schema again and again
def grammar_of(spec: GuidedSpec) -> str:
    """The llguidance grammar for a spec. Raises ValueError for one that does not compile
    (a schema llguidance cannot enforce, a bad regex)."""
    from llguidance import LLMatcher

    if spec.kind == "json_object":
        grammar = LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON)
    elif spec.kind == "json_schema":
        grammar = LLMatcher.grammar_from_json_schema(spec.spec, overrides=_JSON)
    elif spec.kind == "regex":
        grammar = LLMatcher.grammar_from_regex(spec.spec)
    elif spec.kind == "grammar":
        grammar = LLMatcher.grammar_from_lark(_lark(spec))
    else:  # choice: one of the strings, exactly
        choices = json.loads(spec.spec)
        grammar = LLMatcher.grammar_from_lark("start: " + " | ".join(map(json.dumps, choices)))
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise unenforceable(spec, error)
    return grammar


def _lark(spec: GuidedSpec) -> str:
    """A grammar's text as Lark: GBNF (rules as `name ::= ...`, a `root` rule) converted,
    as vLLM's guidance backend does; Lark as it is."""
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        return any_to_lark(spec.spec)
    except Exception as e:  # GbnfToLarkError, and what its parser raises on other text
        raise unenforceable(spec, str(e) or type(e).__name__) from None


def unenforceable(spec: GuidedSpec, why: str) -> ValueError:
    """The error for a spec llguidance refuses (a 400 at the router, INVALID_ARGUMENT at a
    worker)."""
    return ValueError(f"the {spec.kind.replace('_', ' ')} cannot be enforced: {why}")


def check(spec: GuidedSpec) -> None:
    """Raise ValueError unless `spec` compiles (for the router: a 400 before any worker)."""
    grammar_of(spec)
