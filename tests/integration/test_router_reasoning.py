"""`--reasoning-parser` over real HTTP (uvicorn on 127.0.0.1) with the official `openai`
client, in front of the default model (float32). It never thinks in tags by itself, so a
regex (structured output, enforced on every token) makes it: the answer's shape is then
known, its words are the model's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from engine import Engine, SamplingParams
from engine.sampling_params import GuidedSpec
from engine.tokenizer import Tokenizer, load_tokenizer
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from services.router.reasoning import PARSERS
from tests.helpers.asgi_server import serve
from tests.helpers.engine_backend import EngineBackend, engine_state

pytestmark = pytest.mark.slow

MODEL = "smol"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
THINKS = r"<think>[a-z]{3,12}</think>[a-z]{3,12}"  # think, then answer
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 40}


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def backend(smollm_f32: Engine) -> Iterator[EngineBackend]:
    b = EngineBackend(smollm_f32)
    yield b
    assert b.call(engine_state) == {"unfinished": False, "idle": True}  # nothing left behind
    b.close()


def _client(backend: EngineBackend, tokenizer: Tokenizer, parser: str) -> Iterator[openai.OpenAI]:
    app = create_app(
        backend, tokenizer, MODEL, 512, RouterMetrics(MODEL), reasoning=PARSERS[parser]
    )
    with serve(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def qwen3(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[openai.OpenAI]:
    yield from _client(backend, tokenizer, "qwen3")


@pytest.fixture(scope="module")
def r1(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[openai.OpenAI]:
    yield from _client(backend, tokenizer, "deepseek_r1")


def _streamed(client: openai.OpenAI, **kw: Any) -> tuple[str, str]:
    """The reasoning and the content a stream's deltas add up to."""
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model=MODEL, messages=CHAT, stream=True, **kw):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    return reasoning, content


def test_thinking_comes_back_as_reasoning_content_whole_and_streamed(
    qwen3: openai.OpenAI, backend: EngineBackend, tokenizer: Tokenizer
) -> None:
    kw = {**GREEDY, "extra_body": {"guided_regex": THINKS}}
    got = qwen3.chat.completions.create(model=MODEL, messages=CHAT, **kw)
    message = got.choices[0].message
    # what the engine writes for the same request, split at its tags by a regex
    params = SamplingParams(max_tokens=40, guided=GuidedSpec("regex", THINKS))
    prompt = tokenizer.apply_chat_template(CHAT)
    ids = backend.call(lambda e: e.generate([prompt], params)[0].token_ids, timeout=60)
    split = re.fullmatch(r"<think>([a-z]+)</think>([a-z]+)", tokenizer.decode(ids))
    assert split is not None
    thought, answer = split.groups()
    assert getattr(message, "reasoning_content", None) == thought
    assert message.content == answer
    assert _streamed(qwen3, **kw) == (thought, answer)


def test_an_answer_without_tags_is_all_content_for_qwen3(qwen3: openai.OpenAI) -> None:
    got = qwen3.chat.completions.create(model=MODEL, messages=CHAT, **GREEDY)
    message = got.choices[0].message
    assert message.content and not message.content.startswith("<think>")
    assert message.model_extra is not None and "reasoning_content" in message.model_extra
    assert getattr(message, "reasoning_content", "absent") is None
    assert _streamed(qwen3, **GREEDY) == ("", message.content)


def test_r1_output_is_thinking_until_the_tag_and_a_grammar_waits_for_it(
    r1: openai.OpenAI,
) -> None:
    got = r1.chat.completions.create(model=MODEL, messages=CHAT, **GREEDY)
    message = got.choices[0].message
    # the model never closes the thinking the template would have opened: all is thought
    assert message.content is None and getattr(message, "reasoning_content", None)
    assert _streamed(r1, **GREEDY) == (getattr(message, "reasoning_content", None), "")
    # a grammar holds only what follows the end tag (as vLLM): the thinking stays free
    guided = r1.chat.completions.create(
        model=MODEL, messages=CHAT, **GREEDY, extra_body={"guided_regex": THINKS}
    )
    assert guided.choices[0].message.content is None
    assert getattr(guided.choices[0].message, "reasoning_content", None) == getattr(
        message, "reasoning_content", None
    )
    # completions are never split
    text = r1.completions.create(model=MODEL, prompt="<think>a</think>b", **GREEDY)
    assert text.choices[0].text and not hasattr(text.choices[0], "reasoning_content")
