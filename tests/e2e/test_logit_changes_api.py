"""Penalties, logit_bias, min_p, stop_token_ids and top_logprobs through the whole cluster
with the official SDK: a prompt prefilled on one worker and decoded on another gets the
same answer as transformers with the matching logits processors
(tests/helpers/hf_reference.py), so both workers apply a request's changes, and the decode
worker counts the prefill worker's first token."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer, load_tokenizer
from tests.e2e.conftest import API_KEY, MODEL, Served
from tests.helpers.hf_reference import hf_generate

pytestmark = pytest.mark.slow

# Long enough (with the chat template's system prompt) to be prefilled remotely.
QUESTION = (
    "List the names of the planets of the solar system, one per line, starting from the "
    "one closest to the sun, and say nothing else before or after the list."
)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)


def test_disaggregated_answers_with_changes_equal_transformers(
    cluster: Served, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])
    assert len(prompt) > 32  # above the local-prefill threshold: really disaggregated
    plain = _client(cluster).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    first_word = tokenizer.encode(" " + (plain.choices[0].message.content or "x").split()[0])
    bias = {str(first_word[0]): -100}
    routed = cluster.metric("tandem_requests_total", route="disaggregated")
    got = _client(cluster).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        frequency_penalty=0.7,
        presence_penalty=0.3,
        logit_bias=bias,
        # a salt of its own: no prefix hit from the plain answer, so prefilled remotely
        extra_body={"repetition_penalty": 1.15, "cache_salt": "logit-changes"},
    )
    assert cluster.metric("tandem_requests_total", route="disaggregated") == routed + 1
    params = SamplingParams(
        max_tokens=MAX_TOKENS,
        frequency_penalty=0.7,
        presence_penalty=0.3,
        repetition_penalty=1.15,
        logit_bias=((first_word[0], -100.0),),
    )
    want = tokenizer.decode(hf_generate(smollm_hf, prompt, params))
    assert got.choices[0].message.content == want
    assert got.choices[0].message.content != plain.choices[0].message.content


def test_stop_token_ids_end_the_answer_on_that_token(cluster: Served, tokenizer: Tokenizer) -> None:
    client = _client(cluster)
    plain = client.completions.create(
        model=MODEL, prompt="One, two, three, four, five,", max_tokens=12, temperature=0
    )
    ids = tokenizer.encode(plain.choices[0].text)
    stop_at = ids[2]
    got = client.completions.create(
        model=MODEL,
        prompt="One, two, three, four, five,",
        max_tokens=12,
        temperature=0,
        extra_body={"stop_token_ids": [stop_at]},
    )
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.completion_tokens == ids.index(stop_at) + 1


def test_min_p_one_keeps_only_the_likeliest_token(cluster: Served) -> None:
    """min_p = 1 drops every token less likely than the top one: sampling at any
    temperature gives the greedy answer."""
    client = _client(cluster)
    ask = dict(model=MODEL, prompt="The capital of France is", max_tokens=8)
    greedy = client.completions.create(**ask, temperature=0)  # type: ignore[call-overload]
    sampled = client.completions.create(**ask, temperature=1.5, extra_body={"min_p": 1.0})  # type: ignore[call-overload]
    assert sampled.choices[0].text == greedy.choices[0].text


def test_a_bias_for_a_token_past_the_vocabulary_is_a_400(cluster: Served) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _client(cluster).completions.create(
            model=MODEL, prompt="Hi", max_tokens=2, logit_bias={"10000000": 5}
        )
    assert e.value.body["param"] == "logit_bias"  # type: ignore[index]


def test_top_logprobs_come_from_both_workers(cluster: Served) -> None:
    """The first token's come from the prefill worker, the rest from the decode worker."""
    routed = cluster.metric("tandem_requests_total", route="disaggregated")
    got = _client(cluster).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
        extra_body={"cache_salt": "top-logprobs"},
    )
    assert cluster.metric("tandem_requests_total", route="disaggregated") == routed + 1
    assert got.choices[0].logprobs is not None and got.usage is not None
    content = got.choices[0].logprobs.content or []
    assert len(content) == got.usage.completion_tokens == 8
    for entry in content:
        top = entry.top_logprobs
        assert len(top) == 4 and top[0].token == entry.token  # greedy: the likeliest
        assert abs(top[0].logprob - entry.logprob) < 1e-6
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
