"""Structured output's grammar state (engine/guided.py) on the real default model's
tokenizer: masks, completion, and the hand-over of tokens sampled elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.grammar import grammar_of
from engine.guided import Constraint, Grammars
from engine.sampling_params import GuidedSpec
from engine.tokenizer import Tokenizer, load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "required": ["a"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def grammars(tokenizer: Tokenizer) -> Grammars:
    return Grammars(tokenizer.backend, tokenizer.vocab_size, tokenizer.eos_token_ids)


def _follow(
    grammars: Grammars, spec: GuidedSpec, prompt: list[int]
) -> tuple[Constraint, list[int]]:
    tokens = list(prompt)
    return grammars.constraint(spec, tokens, len(prompt)), tokens


def test_a_schema_allows_only_what_can_start_its_json(
    grammars: Grammars, tokenizer: Tokenizer
) -> None:
    c, tokens = _follow(grammars, GuidedSpec("json_schema", json.dumps(SCHEMA)), [1, 2, 3])
    allowed = c.allowed()
    assert allowed is not None and allowed.shape == (tokenizer.vocab_size,)
    starts = {tokenizer.decode([int(t)]) for t in allowed.nonzero().flatten()}
    assert starts and all(s.lstrip().startswith("{") for s in starts), sorted(starts)[:10]
    for t in tokenizer.encode('{"a":12}'):  # compact, as the engine appends sampled tokens
        assert not c.done
        assert c.allowed()[t]  # type: ignore[index]
        tokens.append(t)
    assert c.done and not c.broken


def test_a_choice_allows_exactly_its_strings(grammars: Grammars, tokenizer: Tokenizer) -> None:
    c, tokens = _follow(grammars, GuidedSpec("choice", json.dumps(["yes", "no way"])), [5])
    allowed = c.allowed()
    assert allowed is not None
    assert allowed[tokenizer.encode("yes")[0]] and not allowed[tokenizer.encode("maybe")[0]]
    tokens += tokenizer.encode("no way")
    assert c.done


@pytest.mark.parametrize(
    "text",
    ['start: "id-" DIGITS\nDIGITS: /[0-9]{2}/', 'root ::= "id-" [0-9] [0-9]'],
    ids=["lark", "gbnf"],
)
def test_a_grammar_allows_only_its_language(
    grammars: Grammars, tokenizer: Tokenizer, text: str
) -> None:
    c, tokens = _follow(grammars, GuidedSpec("grammar", text), [5])
    allowed = c.allowed()
    assert allowed is not None
    assert not allowed[tokenizer.encode("name")[0]]
    for t in tokenizer.encode("id-42"):
        assert not c.done and c.allowed()[t]  # type: ignore[index]
        tokens.append(t)
    assert c.done and not c.broken


def test_tokens_sampled_elsewhere_are_caught_up_before_the_next_mask(
    grammars: Grammars, tokenizer: Tokenizer
) -> None:
    """A decode worker's request arrives with the prefill worker's first token in it."""
    word = tokenizer.encode("name")[0]
    fresh, _ = _follow(grammars, GuidedSpec("json_object"), [7, 8])
    assert not fresh.allowed()[word]  # type: ignore[index]  # JSON starts with {, not a word
    c, tokens = _follow(grammars, GuidedSpec("json_object"), [7, 8])
    tokens += tokenizer.encode('{"')
    allowed = c.allowed()
    assert allowed is not None and allowed[word]  # a key may: the {" was consumed


def test_a_token_the_grammar_refuses_breaks_it_without_raising(
    grammars: Grammars, tokenizer: Tokenizer
) -> None:
    c, tokens = _follow(grammars, GuidedSpec("regex", "[0-9]+"), [1])
    tokens += tokenizer.encode("abc")
    assert c.allowed() is None and c.broken and not c.done


def test_a_grammar_after_the_thinking_starts_where_its_end_tag_is(
    grammars: Grammars, tokenizer: Tokenizer
) -> None:
    """A reasoning model's thinking is free; the grammar holds what follows the end tag
    (several tokens here; one special token in DeepSeek-R1's and MiniMax-M2's vocabulary),
    even when the tag's tokens arrive split across steps."""
    end = tuple(tokenizer.encode("</think>"))
    assert len(end) > 1
    spec = GuidedSpec("regex", "[0-9]+", after=end)
    prompt = [1, *end, 2]  # an earlier turn's tag in the prompt does not start it
    c, tokens = _follow(grammars, spec, prompt)
    tokens += tokenizer.encode("Numbers, then: ")  # not the grammar's, and not refused
    assert c.allowed() is None and not c.broken and not c.done
    tokens += end[:1]
    assert c.allowed() is None
    tokens += end[1:]
    allowed = c.allowed()
    assert allowed is not None and not c.broken
    digits = {tokenizer.decode([int(t)]) for t in allowed.nonzero().flatten()}
    assert digits and all(d.isdigit() for d in digits), sorted(digits)[:10]
    tokens += tokenizer.encode("42")
    assert not c.broken and c.allowed() is not None


@pytest.mark.parametrize(
    "spec",
    [
        GuidedSpec("regex", "(unclosed"),
        GuidedSpec("json_schema", '{"type": "nonsense"}'),
        GuidedSpec("grammar", "start: undefined_rule"),
        GuidedSpec("grammar", "root ::= [unclosed"),
        GuidedSpec("grammar", "neither lark nor gbnf ::="),
    ],
)
def test_a_grammar_that_cannot_be_enforced_is_a_value_error(spec: GuidedSpec) -> None:
    with pytest.raises(ValueError, match="cannot be enforced"):
        grammar_of(spec)


def test_spec_kinds_and_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="guided kind"):
        GuidedSpec("yaml")
    with pytest.raises(ValueError, match="at most"):
        GuidedSpec("regex", "a" * 70_000)
