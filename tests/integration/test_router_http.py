"""The router's HTTP edge over real HTTP (uvicorn on 127.0.0.1), driven by httpx and by the
official `openai` client, in front of a real engine (a tiny random-weight Llama with the
default model's 49152-token vocabulary, so the default model's tokenizer fits it).

Every answer is checked against the same engine run offline (`Engine.generate`), and after
every request the engine must be idle with its block pool intact.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS
from engine.tokenizer import Tokenizer, load_tokenizer
from services.router.api_keys import ApiKeys
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from services.router.middleware import DEFAULT_MAX_BODY_BYTES
from tests.helpers.asgi_server import serve
from tests.helpers.engine_backend import EngineBackend, engine_state
from tests.helpers.hf_reference import build_tiny_checkpoint

MODEL = "tiny-llama"
MAX_MODEL_LEN = 4096  # long enough that a full-length answer takes seconds (disconnect tests)
KEY = "sk-test-key"
OTHER_KEY = "sk-other-key"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


# ---- fixtures: one engine, one backend, two servers (open and keyed) --------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("router")
    return build_tiny_checkpoint(
        "llama", root / "llama", vocab_size=49152, max_position_embeddings=MAX_MODEL_LEN
    )


def _engine(path: Path) -> Engine:
    cfg = EngineConfig(
        model=str(path),
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        cache=CacheConfig(num_blocks=1024),
    )
    return Engine(cfg, load_tokenizer_files=False)


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Engine:
    """The same weights, run offline: what every served answer must equal."""
    return _engine(checkpoint)


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> Iterator[EngineBackend]:
    b = EngineBackend(_engine(checkpoint))
    yield b
    b.close()


@pytest.fixture(scope="module")
def metrics() -> RouterMetrics:
    return RouterMetrics(MODEL)


@pytest.fixture(scope="module")
def url(backend: EngineBackend, tokenizer: Tokenizer, metrics: RouterMetrics) -> Iterator[str]:
    with serve(create_app(backend, tokenizer, MODEL, MAX_MODEL_LEN, metrics)) as u:
        yield u


@pytest.fixture(scope="module")
def keyed_url(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[str]:
    app = create_app(
        backend, tokenizer, MODEL, MAX_MODEL_LEN, RouterMetrics(MODEL), ApiKeys((KEY,))
    )
    with serve(app) as u:
        yield u


@pytest.fixture(scope="module")
def public_metrics_url(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[str]:
    keys = ApiKeys((KEY,))
    app = create_app(
        backend, tokenizer, MODEL, MAX_MODEL_LEN, RouterMetrics(MODEL), keys, public_metrics=True
    )
    with serve(app) as u:
        yield u


@pytest.fixture(scope="module")
def limited_url(backend: EngineBackend, tokenizer: Tokenizer) -> Iterator[str]:
    keys = ApiKeys((KEY, OTHER_KEY), max_requests_per_key=2)
    with serve(
        create_app(backend, tokenizer, MODEL, MAX_MODEL_LEN, RouterMetrics(MODEL), keys)
    ) as u:
        yield u


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def engine_left_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that served requests: nothing running, no block leaked."""
    yield
    if "backend" in request.fixturenames:
        backend = request.getfixturevalue("backend")
        _wait_for(lambda: not backend.call(engine_state)["unfinished"], "the engine to idle")
        assert backend.call(engine_state) == {"unfinished": False, "idle": True}


# ---- helpers ------------------------------------------------------------------------------
def _wait_for(ok: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _offline(engine: Engine, prompt: list[int], **params: Any) -> Any:
    (done,) = engine.generate([prompt], SamplingParams(**params))
    return done


def _events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body, checking its framing on the way."""
    body = response.read().decode()
    frames = body.split("\n\n")
    assert frames[-1] == "", "the stream must end with a blank line"
    assert all(f.startswith("data: ") for f in frames[:-1]), body[:300]
    return [f.removeprefix("data: ") for f in frames[:-1]]


def _metric(url: str, sample: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


# ---- answers --------------------------------------------------------------------------------
def test_chat_equals_the_engine_run_offline(
    client: openai.OpenAI, tokenizer: Tokenizer, reference: Engine
) -> None:
    got = client.chat.completions.create(
        model=MODEL, messages=CHAT, temperature=0, max_tokens=24, extra_body={"ignore_eos": True}
    )
    prompt = tokenizer.apply_chat_template(CHAT)
    want = _offline(reference, prompt, max_tokens=24, ignore_eos=True)
    assert got.id.startswith("chatcmpl-") and got.object == "chat.completion"
    assert got.model == MODEL
    (choice,) = got.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode(want.token_ids)
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(prompt), 24)
    assert got.usage.total_tokens == len(prompt) + 24
    again = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == len(prompt) // 16 * 16  # blocks


def test_completion_of_token_ids_with_logprobs(
    client: openai.OpenAI, tokenizer: Tokenizer, reference: Engine
) -> None:
    prompt = tokenizer.encode("Once upon a time, in a land far away")
    got = client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=16, logprobs=1
    )
    want = _offline(reference, prompt, max_tokens=16, logprobs=True)
    (choice,) = got.choices
    assert got.id.startswith("cmpl-") and got.object == "text_completion"
    assert choice.text == tokenizer.decode(want.token_ids)
    assert got.usage is not None and got.usage.prompt_tokens == len(prompt)
    lp = choice.logprobs
    assert lp is not None and lp.top_logprobs is not None
    assert lp.tokens == [tokenizer.decode([t]) for t in want.token_ids]
    assert lp.token_logprobs == pytest.approx(want.logprobs, abs=1e-4)
    # logprobs=1: the likeliest token of each position, the one greedy chose
    pairs = zip(lp.tokens, lp.token_logprobs, strict=True)
    assert lp.top_logprobs == [{s: pytest.approx(v)} for s, v in pairs]
    assert lp.text_offset is not None and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset) and len(lp.text_offset) == len(lp.tokens)


def test_chat_logprobs(client: openai.OpenAI, tokenizer: Tokenizer, reference: Engine) -> None:
    got = client.chat.completions.create(
        model=MODEL, messages=CHAT, temperature=0, max_tokens=8, logprobs=True
    )
    want = _offline(reference, tokenizer.apply_chat_template(CHAT), max_tokens=8, logprobs=True)
    logprobs = got.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [c.logprob for c in logprobs.content] == pytest.approx(want.logprobs, abs=1e-4)
    for entry, token in zip(logprobs.content, want.token_ids, strict=True):
        assert entry.token == tokenizer.decode([token])
        assert entry.bytes == list(entry.token.encode()) and entry.top_logprobs == []


def test_chat_stream_with_usage(
    client: openai.OpenAI, tokenizer: Tokenizer, reference: Engine
) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    want = _offline(reference, tokenizer.apply_chat_template(CHAT), max_tokens=20, ignore_eos=True)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    with_choices, last = chunks[:-1], chunks[-1]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == tokenizer.decode(want.token_ids)
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert all(c.choices[0].delta.content for c in with_choices[1:-1])  # no empty chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == len(tokenizer.apply_chat_template(CHAT))


def test_completion_stream_over_raw_sse(url: str, tokenizer: Tokenizer, reference: Engine) -> None:
    body = {"model": MODEL, "prompt": "The sea", "temperature": 0, "max_tokens": 12}
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)  # not asked for
    text = "".join(c["choices"][0]["text"] for c in chunks)
    want = _offline(reference, tokenizer.encode("The sea"), max_tokens=12)
    assert text == tokenizer.decode(want.token_ids)
    assert chunks[-1]["choices"][0]["finish_reason"] == want.finish_reason
    plain = httpx.post(f"{url}/v1/completions", json=body).json()
    assert plain["choices"][0]["text"] == text


def test_stop_string_ends_the_answer_before_it(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "messages": CHAT, "temperature": 0, "max_tokens": 40}
    full = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 :][:3]
    assert stop.strip(), f"need a visible stop string from {text!r}"
    expected = text[: text.index(stop)]
    got = client.chat.completions.create(**ask, stop=[stop], extra_body={"ignore_eos": True})
    assert got.choices[0].message.content == expected
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.completion_tokens < 40
    stream = client.chat.completions.create(**ask, stop=stop, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        got = client.completions.create(
            model=MODEL,
            prompt="Hello",
            temperature=1.0,
            seed=seed,
            max_tokens=16,
            extra_body={"top_k": 50, "min_tokens": 16},
        )
        assert got.usage is not None and got.usage.completion_tokens == 16  # min_tokens held
        return got.choices[0].text

    assert ask(7) == ask(7)
    assert len({ask(7), ask(8), ask(9)}) > 1
    # OpenAI's seeds are signed; the wire's are not: a negative one is read modulo 2**64,
    # as torch reads it, and still repeats
    assert ask(-1) == ask(-1)


def test_concurrent_streams_each_equal_their_offline_run(
    url: str, tokenizer: Tokenizer, reference: Engine
) -> None:
    prompts = ["The capital of France is", "def fib(n):", "Héllo wörld 🌍", "1, 2, 3,"]

    async def one(http: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 24}
        async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
        return "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines)

    async def all_at_once() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return await asyncio.gather(*(one(http, p) for p in prompts))

    got = asyncio.run(all_at_once())
    for prompt, text in zip(prompts, got, strict=True):
        want = _offline(reference, tokenizer.encode(prompt), max_tokens=24)
        assert text == tokenizer.decode(want.token_ids), prompt


# ---- refusals -------------------------------------------------------------------------------
def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CHAT, "max_tokens": 4, **fields}


def _cmpl(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hi", "max_tokens": 4, **fields}


CHAT_PATH, CMPL_PATH = "/v1/chat/completions", "/v1/completions"
TOO_LONG = "context_length_exceeded"
# (path, body, status, param, code)
BAD_REQUESTS: list[tuple[str, Any, int, str | None, str | None]] = [
    (CHAT_PATH, b'{"model": "tiny-llama", "messages": [', 400, None, None),
    (CHAT_PATH, [1, 2], 400, None, None),
    (CHAT_PATH, _chat(max_tokens="5"), 400, "max_tokens", None),
    (CHAT_PATH, _chat(temperature="hot"), 400, "temperature", None),
    (CHAT_PATH, _chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    (CHAT_PATH, _chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role", None),
    (CHAT_PATH, _chat(messages=[]), 400, "messages", None),
    (CHAT_PATH, {"messages": CHAT}, 400, "model", None),
    (CHAT_PATH, _chat(model="gpt-4o"), 404, "model", "model_not_found"),
    (CHAT_PATH, _chat(max_tokens=0), 400, "max_tokens", None),
    (CHAT_PATH, _chat(max_completion_tokens=-3), 400, "max_completion_tokens", None),
    (CHAT_PATH, _chat(max_tokens=MAX_MODEL_LEN), 400, "max_tokens", TOO_LONG),
    (CHAT_PATH, _chat(temperature=-1), 400, "temperature", None),
    (CHAT_PATH, _chat(temperature=3), 400, "temperature", None),
    (CHAT_PATH, _chat(top_p=0), 400, "top_p", None),
    (CHAT_PATH, _chat(top_k=-2), 400, "top_k", None),
    (CHAT_PATH, _chat(top_k=2**32), 400, "top_k", None),  # past the wire's uint32
    (CHAT_PATH, _chat(seed=2**63), 400, "seed", None),
    (CHAT_PATH, _chat(n=9), 400, "n", None),
    (CHAT_PATH, _chat(top_logprobs=5), 400, "top_logprobs", None),  # needs logprobs=true
    (CHAT_PATH, _chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    (CHAT_PATH, _chat(stop=[""]), 400, "stop", None),
    (CHAT_PATH, _chat(stop="x" * (MAX_STOP_CHARS + 1)), 400, "stop", None),
    (CHAT_PATH, _chat(stop=[str(i) for i in range(MAX_STOP_STRINGS + 1)]), 400, "stop", None),
    (CHAT_PATH, _chat(min_tokens=9), 400, "min_tokens", None),
    (CHAT_PATH, _chat(stream_options={"include_usage": True}), 400, "stream_options", None),
    (CHAT_PATH, _chat(presence_penalty=2.5), 400, "presence_penalty", None),
    (CHAT_PATH, _chat(logit_bias={"49152": 1}), 400, "logit_bias", None),
    (CMPL_PATH, _cmpl(prompt=[7] * MAX_MODEL_LEN), 400, "prompt", TOO_LONG),
    (CMPL_PATH, {"model": MODEL, "prompt": [7] * MAX_MODEL_LEN}, 400, "prompt", TOO_LONG),
    (CMPL_PATH, _cmpl(prompt=[7] * 4000, max_tokens=97), 400, "max_tokens", TOO_LONG),
    (CMPL_PATH, _cmpl(prompt=["a"] * 9), 400, "prompt", None),  # at most 8 prompts
    (CMPL_PATH, _cmpl(prompt=[49152]), 400, "prompt", None),
    (CMPL_PATH, _cmpl(prompt=""), 400, "prompt", None),
    (CMPL_PATH, _cmpl(logprobs=6), 400, "logprobs", None),
    (CMPL_PATH, _cmpl(echo="yes"), 400, "echo", None),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD_REQUESTS)
def test_bad_request_gets_an_openai_error(
    url: str, path: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    if isinstance(body, bytes):
        r = httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{url}{path}", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code), error["message"]
    assert "Traceback" not in error["message"]


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(url: str) -> None:
    json_type = {"content-type": "application/json"}
    just_over = json.dumps(_cmpl(prompt="x" * DEFAULT_MAX_BODY_BYTES)).encode()
    declared = httpx.post(f"{url}{CMPL_PATH}", content=just_over, headers=json_type)
    chunked = httpx.post(  # no Content-Length: counted as it arrives
        f"{url}{CMPL_PATH}", content=iter([just_over[:4096], just_over[4096:]]), headers=json_type
    )
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert str(DEFAULT_MAX_BODY_BYTES) in error["message"]
    # At the limit the body is read, parsed and tokenized: refused for its length instead.
    at_limit = _cmpl(prompt="x" * (DEFAULT_MAX_BODY_BYTES - 200))
    at_limit["prompt"] += "x" * (DEFAULT_MAX_BODY_BYTES - len(json.dumps(at_limit)))
    r = httpx.post(
        f"{url}{CMPL_PATH}", content=json.dumps(at_limit), headers=json_type, timeout=120
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == TOO_LONG, r.text


def test_not_supported_says_so(url: str) -> None:
    r = httpx.post(f"{url}{CHAT_PATH}", json=_chat(functions=[{"name": "f"}]))  # OpenAI's old
    assert "not supported" in r.json()["error"]["message"]


def test_unknown_path_and_wrong_method(url: str) -> None:
    r = httpx.post(f"{url}/v1/embeddings", json={})
    assert (
        r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    )
    r = httpx.get(f"{url}{CHAT_PATH}")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=MODEL, prompt="Hi", n=9)
    assert too_many.value.param == "n"


def test_still_serving_after_the_refusals(client: openai.OpenAI) -> None:
    got = client.completions.create(model=MODEL, prompt="Still there?", max_tokens=3)
    assert got.usage is not None and got.usage.completion_tokens >= 1


# ---- the rest of the API --------------------------------------------------------------------
def test_models_health_ready_metrics(url: str, client: openai.OpenAI) -> None:
    (card,) = client.models.list().data
    assert card.id == MODEL and card.owned_by == "tandem"
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["max_model_len"] == MAX_MODEL_LEN
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/ready").json() == {"status": "ready"}
    r = httpx.get(f"{url}/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_ready_is_503_without_a_live_backend(checkpoint: Path, tokenizer: Tokenizer) -> None:
    dead = EngineBackend(_engine(checkpoint))
    dead.close()
    with serve(create_app(dead, tokenizer, MODEL, MAX_MODEL_LEN, RouterMetrics(MODEL))) as u:
        r = httpx.get(f"{u}/ready")
        assert httpx.get(f"{u}/health").status_code == 200
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_what_the_engine_refuses_is_a_plain_http_error(
    checkpoint: Path, tokenizer: Tokenizer
) -> None:
    cfg = EngineConfig(model=str(checkpoint), dtype="float32", cache=CacheConfig(num_blocks=4))
    small = EngineBackend(Engine(cfg, load_tokenizer_files=False))  # 64 tokens of KV cache
    try:
        with serve(create_app(small, tokenizer, MODEL, MAX_MODEL_LEN, RouterMetrics(MODEL))) as u:
            body = {"model": MODEL, "prompt": "Hi", "max_tokens": 100, "stream": True}
            r = httpx.post(f"{u}/v1/completions", json=body)
    finally:
        small.close()
    assert r.status_code == 400 and "KV cache" in r.json()["error"]["message"]


def test_metrics_count_what_was_served(url: str, client: openai.OpenAI) -> None:
    ok = {"route": "colocated", "status": "ok"}
    before = _metric(url, "tandem_requests_total", **ok)
    tokens_before = _metric(url, "tandem:generation_tokens_total")
    errors_before = _metric(url, "tandem_http_errors_total", status="404")
    client.completions.create(
        model=MODEL, prompt="Count me", max_tokens=5, extra_body={"ignore_eos": True}
    )
    httpx.post(f"{url}{CHAT_PATH}", json=_chat(model="nope"))
    assert _metric(url, "tandem_requests_total", **ok) == before + 1
    assert _metric(url, "tandem:generation_tokens_total") == tokens_before + 5
    assert _metric(url, "tandem_http_errors_total", status="404") == errors_before + 1
    assert _metric(url, "tandem:prompt_tokens_total") > 0
    assert _metric(url, "tandem:time_to_first_token_seconds_count") >= before + 1
    assert _metric(url, "tandem:inter_token_latency_seconds_count") >= 4
    assert _metric(url, "tandem:e2e_request_latency_seconds_count") >= before + 1
    text = httpx.get(f"{url}/metrics").text
    for name in ("tandem_queue_depth", "tandem_nixl_bytes_total", "tandem_kv_recomputed_total"):
        assert name in text  # declared, for the dispatcher to update


# ---- the API key ------------------------------------------------------------------------------
def test_api_key(keyed_url: str) -> None:
    # Kubernetes' probes send no key: both answer, and say only up or ready
    assert httpx.get(f"{keyed_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{keyed_url}/ready").json() == {"status": "ready"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.get(f"{keyed_url}/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # checked before the body is even read
    r = httpx.post(f"{keyed_url}{CHAT_PATH}", content=b"{not json")
    assert r.status_code == 401
    assert httpx.get(f"{keyed_url}/metrics").status_code == 401
    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{keyed_url}/v1/models", headers=good).status_code == 200
    sdk = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, max_retries=0, timeout=30)
    got = sdk.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert got.choices[0].finish_reason in ("stop", "length")
    wrong = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_public_metrics_open_metrics_alone(public_metrics_url: str) -> None:
    r = httpx.get(f"{public_metrics_url}/metrics")
    assert r.status_code == 200 and "tandem_" in r.text
    assert httpx.get(f"{public_metrics_url}/v1/models").status_code == 401
    assert httpx.post(f"{public_metrics_url}{CHAT_PATH}", json={}).status_code == 401


def test_each_key_has_its_own_limit_on_requests_in_progress(limited_url: str) -> None:
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    body = {**LONG, "max_tokens": 400, "stream": True}
    with ExitStack() as held:
        streams = []
        for _ in range(2):  # the key's two places, held while their streams run
            r = held.enter_context(
                httpx.stream("POST", f"{limited_url}{CMPL_PATH}", json=body, headers=auth(KEY))
            )
            assert r.status_code == 200
            streams.append(r.iter_lines())
            next(streams[-1])  # the first token is out: the request is running
        third = httpx.post(f"{limited_url}{CMPL_PATH}", json=LONG, headers=auth(KEY))
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        sdk = openai.OpenAI(base_url=f"{limited_url}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        # other keys, and the key's GETs, are not held back
        assert httpx.get(f"{limited_url}/v1/models", headers=auth(KEY)).status_code == 200
        other = httpx.post(
            f"{limited_url}{CMPL_PATH}", json={**LONG, "max_tokens": 2}, headers=auth(OTHER_KEY)
        )
        assert other.status_code == 200
    # the streams were left mid-way: their places are free again
    _wait_for(
        lambda: (
            httpx.post(
                f"{limited_url}{CMPL_PATH}", json={**LONG, "max_tokens": 2}, headers=auth(KEY)
            ).status_code
            == 200
        ),
        "the key's places to come back",
        timeout=5,
    )


# ---- clients that leave -----------------------------------------------------------------------
LONG = {"model": MODEL, "prompt": "Go on", "max_tokens": 4000, "ignore_eos": True}


def test_client_leaving_a_stream_aborts_the_request(url: str, backend: EngineBackend) -> None:
    aborted = {"route": "colocated", "status": "aborted"}
    before = _metric(url, "tandem_requests_total", **aborted)
    tokens_before = _metric(url, "tandem:generation_tokens_total")
    with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(6):  # a few chunks in, the request is surely running
            next(lines)
        assert backend.call(engine_state)["unfinished"]
    # leaving the block closed the connection mid-stream
    _wait_for(lambda: not backend.call(engine_state)["unfinished"], "the abort", timeout=3)
    _wait_for(lambda: _metric(url, "tandem_requests_total", **aborted) == before + 1, "metric")
    assert _metric(url, "tandem:generation_tokens_total") - tokens_before < 4000


def test_client_leaving_before_the_answer_aborts_it(url: str, backend: EngineBackend) -> None:
    aborted = {"route": "colocated", "status": "aborted"}
    before = _metric(url, "tandem_requests_total", **aborted)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=LONG, timeout=httpx.Timeout(5, read=0.3))
    _wait_for(lambda: not backend.call(engine_state)["unfinished"], "the abort", timeout=3)
    _wait_for(lambda: _metric(url, "tandem_requests_total", **aborted) == before + 1, "metric")
