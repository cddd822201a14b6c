"""Structured output through the whole cluster with the official SDK: `.parse()` with a
pydantic model returns a valid instance for 20 different prompts from the 135M default
model, streamed JSON mode is JSON, and a schema that cannot be enforced is a 400."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from pydantic import BaseModel

from tests.e2e.conftest import API_KEY, MODEL, Served

pytestmark = pytest.mark.slow

TOPICS = [
    "a lighthouse keeper", "a retired astronaut", "a baker in Paris", "a chess champion",
    "a young pianist", "a marine biologist", "a mountain guide", "a librarian",
    "a street musician", "a beekeeper", "a train driver", "a potter", "a surgeon",
    "a cartographer", "a night-shift nurse", "a carpenter", "a jazz singer",
    "a glacier scientist", "a florist", "a stand-up comedian",
]  # fmt: skip


class Character(BaseModel):
    name: str
    age: int
    hometown: str
    is_fictional: bool


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)


def test_parse_returns_a_valid_instance_for_twenty_prompts(cluster: Served) -> None:
    client = _client(cluster)

    def ask(topic: str) -> Character | None:
        r = client.beta.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": f"Invent a character: {topic}."}],
            response_format=Character,
            max_tokens=160,
            temperature=0,
        )
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        return r.choices[0].message.parsed

    with ThreadPoolExecutor(5) as pool:
        parsed = list(pool.map(ask, TOPICS))
    assert all(isinstance(p, Character) for p in parsed), parsed
    assert len({p.name for p in parsed if p is not None}) > 1  # answers, not one canned text


def test_streamed_json_mode_is_a_json_object(cluster: Served) -> None:
    stream = _client(cluster).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List two fruits and their colours."}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict), text


def test_vllm_guided_choice_picks_one_of_the_strings(cluster: Served) -> None:
    r = _client(cluster).completions.create(
        model=MODEL,
        prompt="Is the sky blue? Answer:",
        max_tokens=8,
        temperature=0,
        extra_body={"guided_choice": [" yes", " no"]},
    )
    assert r.choices[0].text in (" yes", " no")


def test_vllm_guided_grammar_holds_the_text_to_its_language(cluster: Served) -> None:
    r = _client(cluster).completions.create(
        model=MODEL,
        prompt="The year the Berlin wall fell:",
        max_tokens=8,
        temperature=0,
        extra_body={"guided_grammar": 'root ::= " " [12] [0-9] [0-9] [0-9]'},  # GBNF
    )
    assert re.fullmatch(r" [12][0-9]{3}", r.choices[0].text), r.choices[0].text


def test_a_schema_that_cannot_be_enforced_is_a_400(cluster: Served) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _client(cluster).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            extra_body={"guided_regex": "(unclosed"},
        )
    assert e.value.body["param"] == "guided_regex"  # type: ignore[index]
