"""Several choices in one answer (`n`, and completions' lists of prompts) over real HTTP
(uvicorn on 127.0.0.1) with the official `openai` client, in front of a real engine (a tiny
random-weight Llama with the default model's vocabulary). Each choice is checked against
the same engine run offline; each prompt is computed once, whatever `n`; and the engine is
left idle with its block pool intact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.tokenizer import Tokenizer, load_tokenizer
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from tests.helpers.asgi_server import serve
from tests.helpers.engine_backend import EngineBackend, engine_state
from tests.helpers.hf_reference import build_tiny_checkpoint

MODEL = "tiny-llama"
BLOCK = 16  # the engine's block size: a prompt's cached part is whole blocks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("choices")
    return build_tiny_checkpoint("llama", root / "llama", vocab_size=49152)


def _engine(path: Path) -> Engine:
    cfg = EngineConfig(model=str(path), dtype="float32", cache=CacheConfig(num_blocks=512))
    return Engine(cfg, load_tokenizer_files=False)


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Engine:
    return _engine(checkpoint)


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> Iterator[EngineBackend]:
    b = EngineBackend(_engine(checkpoint))
    yield b
    b.close()


@pytest.fixture(scope="module")
def url(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[str]:
    with serve(create_app(backend, tokenizer, MODEL, 1024, RouterMetrics(MODEL))) as u:
        yield u


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def engine_left_clean(backend: EngineBackend) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 10
    while backend.call(engine_state)["unfinished"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.call(engine_state) == {"unfinished": False, "idle": True}


def _offline(engine: Engine, prompt: list[int], **params: Any) -> list[int]:
    (done,) = engine.generate([prompt], SamplingParams(**params))
    return list(done.token_ids)


def _prefilled(backend: EngineBackend) -> int:
    return backend.call(lambda e: e.totals.prefill_tokens)


def test_n_greedy_choices_share_one_computed_prompt(
    client: openai.OpenAI, backend: EngineBackend, reference: Engine, tokenizer: Tokenizer
) -> None:
    chat = [{"role": "user", "content": "Name three rivers of Europe, please."}]
    prompt = tokenizer.apply_chat_template(chat)
    before = _prefilled(backend)
    got = client.chat.completions.create(
        model=MODEL, messages=chat, n=3, max_tokens=8, temperature=0
    )
    want = tokenizer.decode(_offline(reference, prompt, max_tokens=8))
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert [c.message.content for c in got.choices] == [want] * 3
    # the prompt computed once: the other two read its whole blocks from the cache and
    # compute only its last, partial block
    tail = len(prompt) % BLOCK or BLOCK
    assert _prefilled(backend) - before == len(prompt) + 2 * tail
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(prompt), 24)


def test_n_streamed_choices_carry_their_index(
    client: openai.OpenAI, reference: Engine, tokenizer: Tokenizer
) -> None:
    chat = [{"role": "user", "content": "Count from one, slowly."}]
    prompt = tokenizer.apply_chat_template(chat)
    texts, roles, finishes, usage = ["", ""], [0, 0], [0, 0], None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=chat,
        n=2,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles[c.index] += c.delta.role == "assistant"
            finishes[c.index] += c.finish_reason is not None
    want = tokenizer.decode(_offline(reference, prompt, max_tokens=6))
    assert texts == [want, want] and roles == [1, 1] and finishes == [1, 1]
    assert usage is not None and usage.completion_tokens == 12
    assert usage.prompt_tokens == len(prompt)


def test_seeded_choices_differ_and_repeat(client: openai.OpenAI) -> None:
    def texts() -> list[str]:
        got = client.completions.create(
            model=MODEL, prompt="Once upon a time", n=3, max_tokens=12, temperature=1.0, seed=11
        )
        return [c.text for c in sorted(got.choices, key=lambda c: c.index)]

    first = texts()
    assert len(set(first)) == 3  # seed, seed + 1, seed + 2
    assert texts() == first


def test_several_prompts_each_with_n_choices(
    url: str, reference: Engine, tokenizer: Tokenizer
) -> None:
    prompts = ["The sea is", "Mountains are", "In the city of"]
    body = {"model": MODEL, "prompt": prompts, "n": 2, "max_tokens": 5, "temperature": 0}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    for p, text in enumerate(prompts):
        want = tokenizer.decode(_offline(reference, tokenizer.encode(text), max_tokens=5))
        assert [choices[p * 2 + k]["text"] for k in range(2)] == [want, want]
    ids = [tokenizer.encode(t) for t in prompts]
    assert r.json()["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    assert r.json()["usage"]["completion_tokens"] == 30


def test_leaving_a_stream_of_several_choices_aborts_them_all(url: str) -> None:
    body = {
        "model": MODEL,
        "prompt": "A long story:",
        "n": 3,
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        seen: set[int] = set()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen.add(int(line.split('"index":')[1].split(",")[0]))
            if len(seen) == 3:
                break  # every choice is running: leave (the fixture checks they ended)
