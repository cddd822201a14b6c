"""Structured output on the real default model (135M parameters, float32): its answers
follow the grammar every time, JSON of a schema, a regex, one of several strings, even
where its unconstrained answer would not."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel, ConfigDict

from engine import Engine, SamplingParams
from engine.sampling_params import GuidedSpec

pytestmark = pytest.mark.slow


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict mode

    name: str
    age: int
    likes_cats: bool


ASKS = [
    "Describe a fictional person as JSON.",
    "Who wrote Hamlet? Answer in JSON.",
    "Invent a character for a story.",
    "Tell me about your best friend.",
    "What is two plus two?",
]


def _chat(engine: Engine, text: str) -> list[int]:
    assert engine.tokenizer is not None
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def test_json_of_a_schema_every_time(smollm_f32: Engine) -> None:
    spec = GuidedSpec("json_schema", json.dumps(Person.model_json_schema()))
    prompts = [_chat(smollm_f32, a) for a in ASKS]
    plain = smollm_f32.generate(prompts, SamplingParams(max_tokens=64))
    assert any(not c.text.lstrip().startswith("{") for c in plain)  # it would not, alone
    for params in (
        SamplingParams(max_tokens=96, guided=spec),
        SamplingParams(max_tokens=96, guided=spec, temperature=1.0, seed=3),
    ):
        for c in smollm_f32.generate(prompts, params):
            Person.model_validate_json(c.text)  # raises if not valid
            assert c.finish_reason == "stop"
    smollm_f32.pool.check_integrity()


def test_a_regex_and_a_choice(smollm_f32: Engine) -> None:
    prompt = _chat(smollm_f32, "What is the capital of France?")
    (date,) = smollm_f32.generate(
        [prompt], SamplingParams(max_tokens=20, guided=GuidedSpec("regex", r"[0-9]{4}-[0-9]{2}"))
    )
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}", date.text), date.text
    choices = ["Paris", "Lyon", "not sure"]
    (pick,) = smollm_f32.generate(
        [prompt], SamplingParams(max_tokens=20, guided=GuidedSpec("choice", json.dumps(choices)))
    )
    assert pick.text in choices and pick.finish_reason == "stop"


def test_json_object_mixed_with_free_requests_in_one_batch(smollm_f32: Engine) -> None:
    prompts = [_chat(smollm_f32, a) for a in ASKS[:2]]
    tag = "guided-mixed"
    free = smollm_f32.add_request(f"{tag}-0", prompts[0], SamplingParams(max_tokens=24))
    bound = smollm_f32.add_request(
        f"{tag}-1", prompts[1], SamplingParams(max_tokens=96, guided=GuidedSpec("json_object"))
    )
    while smollm_f32.has_unfinished():
        smollm_f32.step()
    assert smollm_f32.tokenizer is not None
    assert isinstance(json.loads(smollm_f32.tokenizer.decode(bound.output_token_ids)), dict)
    (alone,) = smollm_f32.generate([prompts[0]], SamplingParams(max_tokens=24))
    assert free.output_token_ids == alone.token_ids  # its neighbour's mask is not its own
