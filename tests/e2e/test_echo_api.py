"""Completions' `echo` through the whole cluster with the official SDK: the prompt ahead of
the completion, and with `logprobs` its tokens' logprobs (lm-evaluation-harness scores
answers this way: echo, logprobs, max_tokens 1). The values themselves are checked against
transformers at the engine (tests/integration/test_smollm_top_logprobs.py)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from engine.tokenizer import Tokenizer, load_tokenizer
from tests.e2e.conftest import API_KEY, MODEL, Served

pytestmark = pytest.mark.slow

# Long enough to be prefilled on a prefill worker, were its logprobs not asked for.
PROMPT = (
    "The planets of the solar system, from the one closest to the sun outwards, are "
    "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune. The largest is"
)


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)


def test_echo_with_logprobs_scores_the_prompt(cluster: Served, tokenizer: Tokenizer) -> None:
    client = _client(cluster)
    ask = dict(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    plain = client.completions.create(**ask)  # type: ignore[call-overload]
    routed = cluster.metric("tandem_requests_total", route="local_prefill_prompt_logprobs")
    got = client.completions.create(**ask, echo=True)  # type: ignore[call-overload]
    assert cluster.metric("tandem_requests_total", route="local_prefill_prompt_logprobs") == (
        routed + 1
    )
    choice, ids = got.choices[0], tokenizer.encode(PROMPT)
    assert choice.text == PROMPT + plain.choices[0].text
    lp, want = choice.logprobs, plain.choices[0].logprobs
    assert lp is not None and want is not None
    assert lp.tokens == [tokenizer.decode([t]) for t in ids] + want.tokens
    assert lp.token_logprobs is not None and lp.top_logprobs is not None
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before it
    prompt_lps = lp.token_logprobs[1 : len(ids)]
    assert all(v is not None and v <= 0.0 for v in prompt_lps)
    assert lp.token_logprobs[len(ids) :] == pytest.approx(want.token_logprobs, abs=1e-4)
    assert all(len(t) >= 1 for t in lp.top_logprobs[1:])  # 2, or 1 where two share a text
    assert lp.text_offset is not None and lp.text_offset[len(ids)] == len(
        "".join(lp.tokens[: len(ids)])
    )
    assert got.usage is not None and got.usage.completion_tokens == 4  # the prompt is not


def test_streamed_echo_is_the_same_answer(cluster: Served) -> None:
    client = _client(cluster)
    ask = dict(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1, echo=True)
    whole = client.completions.create(**ask)  # type: ignore[call-overload]
    chunks = list(client.completions.create(**ask, stream=True))  # type: ignore[call-overload]
    assert chunks[0].choices[0].text == PROMPT  # the prompt first, on its own
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    streamed = [v for c in chunks if c.choices for v in c.choices[0].logprobs.token_logprobs]
    assert whole.choices[0].logprobs is not None
    assert streamed == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-6)


def test_echo_without_logprobs_is_routed_as_any_prompt(cluster: Served) -> None:
    """Only scoring the prompt needs it computed whole where it decodes; its text alone
    does not."""
    client = _client(cluster)
    ask = dict(model=MODEL, prompt=PROMPT + " Jupiter.", max_tokens=3, temperature=0)
    scored = cluster.metric("tandem_requests_total", route="local_prefill_prompt_logprobs")
    plain = client.completions.create(**ask)  # type: ignore[call-overload]
    got = client.completions.create(**ask, echo=True)  # type: ignore[call-overload]
    assert got.choices[0].text == PROMPT + " Jupiter." + plain.choices[0].text
    assert got.choices[0].logprobs is None
    assert cluster.metric("tandem_requests_total", route="local_prefill_prompt_logprobs") == scored
