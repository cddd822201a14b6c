"""The router's HTTP edge against backends that misbehave on cue.

The real engine (tests/integration/test_router_http.py) never aborts a request by itself,
fails mid-stream or ignores a stop string, so these paths are driven by a scripted backend
that yields given deltas and then fails as told. The tokenizer is a real byte-level BPE
(every byte a token), so multi-byte characters span tokens as they do in real models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine.tokenizer import Tokenizer
from services.router.app import create_app
from services.router.backend import BackendError, GenerateRequest, TokenDelta
from services.router.completion_body import CompletionRequest
from services.router.errors import field_path
from services.router.metrics import RouterMetrics
from services.router.sampling import DEFAULT_MAX_TOKENS_CAP, resolve_max_tokens

MODEL = "scripted"


def _byte_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + 1, special_tokens=["</s>"], initial_alphabet=alphabet
    )
    raw.train_from_iterator([], trainer)  # no merges: one token per byte
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant: "
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", chat_template=template)
    return Tokenizer.from_hf(hf)


TOKENIZER = _byte_tokenizer()


class ScriptedBackend:
    """Yields `deltas`, then raises `fail` if given. Records how each run ended."""

    def __init__(
        self, deltas: list[TokenDelta], fail: Exception | None = None, ready: bool = True
    ) -> None:
        self.deltas, self.fail, self._ready = deltas, fail, ready
        self.requests: list[GenerateRequest] = []
        self.sent = 0  # deltas handed out
        self.closed = 0  # runs whose iterator was closed (finished or not)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        self.requests.append(request)
        try:
            for delta in self.deltas:
                self.sent += 1
                yield delta
                await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed += 1

    async def ready(self) -> bool:
        return self._ready


def _deltas(text: str, finish: str | None = "stop", route: str = "colocated") -> list[TokenDelta]:
    """One delta per token of `text`; the last finishes with `finish` (None: never)."""
    ids = TOKENIZER.encode(text)
    out = [TokenDelta([t], [-0.5]) for t in ids]
    out[0].route, out[0].num_cached_tokens = route, 3
    if finish is not None:
        out[-1].finished, out[-1].finish_reason = True, finish
    return out


def _post(backend: ScriptedBackend, path: str, body: dict[str, Any]) -> httpx.Response:
    metrics = RouterMetrics(MODEL)
    return asyncio.run(_post_async(backend, metrics, path, body))


async def _post_async(
    backend: ScriptedBackend, metrics: RouterMetrics, path: str, body: dict[str, Any]
) -> httpx.Response:
    app = create_app(backend, TOKENIZER, MODEL, 256, metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        r = await http.post(path, json={"model": MODEL, **body})
        await r.aread()
        return r


def _sse(r: httpx.Response) -> list[Any]:
    frames = r.text.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]", r.text
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]


def test_a_stop_string_the_backend_missed_ends_the_request() -> None:
    backend = ScriptedBackend(_deltas("hello world and more", finish=None))
    r = _post(backend, "/v1/completions", {"prompt": "x", "max_tokens": 30, "stop": "wor"})
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("hello ", "stop")
    assert backend.sent == len("hello wor") and backend.closed == 1  # closed = aborted
    assert r.json()["usage"]["completion_tokens"] == len("hello wor")
    assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_characters_split_across_tokens_are_never_sent_half_done() -> None:
    backend = ScriptedBackend(_deltas("héllo 🌍!"))
    r = _post(backend, "/v1/chat/completions", _chat_body(stream=True))
    chunks = _sse(r)
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(texts) == "héllo 🌍!"
    assert not any("\ufffd" in t for t in texts)
    assert len(chunks) < len(backend.deltas) + 1  # held-back tokens made no empty chunks


def test_logprobs_of_held_back_tokens_ride_on_the_next_chunk() -> None:
    backend = ScriptedBackend(_deltas("é!"))  # three tokens: two bytes of é, then !
    body = _chat_body(stream=True, logprobs=True)
    chunks = _sse(_post(backend, "/v1/chat/completions", body))
    content = [c["choices"][0]["logprobs"] for c in chunks[1:]]
    assert sum(len(lp["content"]) for lp in content) == 3


def test_an_engine_abort_is_an_error_not_an_answer() -> None:
    deltas = _deltas("partial", finish="abort")
    r = _post(ScriptedBackend(deltas), "/v1/completions", {"prompt": "x", "max_tokens": 9})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    r = _post(ScriptedBackend(deltas), "/v1/completions", {"prompt": "x", "stream": True})
    assert r.status_code == 200  # the stream had started
    *chunks, error = _sse(r)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "partia"
    assert set(error) == {"error"} and "aborted" in error["error"]["message"]


def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    backend = ScriptedBackend(_deltas("abc", finish=None), fail=BackendError(502, "worker died"))
    metrics = RouterMetrics(MODEL)
    body = {"prompt": "x", "stream": True, "max_tokens": 9}
    r = asyncio.run(_post_async(backend, metrics, "/v1/completions", body))
    *chunks, error = _sse(r)
    assert error == {
        "error": {"message": "worker died", "type": "server_error", "param": None, "code": None}
    }
    assert metrics.http_errors.labels(status="502")._value.get() == 1
    assert metrics.requests.labels(route="colocated", status="error")._value.get() == 1


def test_a_failure_before_the_first_token_keeps_its_status() -> None:
    backend = ScriptedBackend([], fail=BackendError(503, "no decode worker", "server_error"))
    r = _post(backend, "/v1/chat/completions", _chat_body(stream=True))
    assert r.status_code == 503 and r.json()["error"]["message"] == "no decode worker"


def test_overload_is_a_429_that_says_when_to_come_back() -> None:
    backend = ScriptedBackend([], fail=BackendError(429, "at capacity", "overloaded", 1))
    for stream in (True, False):
        r = _post(backend, "/v1/chat/completions", _chat_body(stream=stream))
        assert (r.status_code, r.headers["retry-after"]) == (429, "1"), r.text
        assert r.json()["error"]["type"] == "overloaded"


def test_a_bug_is_a_500_without_a_traceback() -> None:
    backend = ScriptedBackend([], fail=RuntimeError("secret internals"))
    metrics = RouterMetrics(MODEL)
    r = asyncio.run(_post_async(backend, metrics, "/v1/completions", {"prompt": "x"}))
    assert r.status_code == 500
    assert r.json()["error"] == {
        "message": "The server had an error.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert metrics.http_errors.labels(status="500")._value.get() == 1


def test_a_stream_that_ends_unfinished_is_a_502() -> None:
    r = _post(ScriptedBackend(_deltas("ab", finish=None)), "/v1/completions", {"prompt": "x"})
    assert r.status_code == 502


def test_ready_follows_the_backend() -> None:
    async def get(backend: ScriptedBackend) -> httpx.Response:
        app = create_app(backend, TOKENIZER, MODEL, 256, RouterMetrics(MODEL))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            return await http.get("/ready")

    assert asyncio.run(get(ScriptedBackend([]))).status_code == 200
    r = asyncio.run(get(ScriptedBackend([], ready=False)))
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_the_request_reaching_the_backend() -> None:
    backend = ScriptedBackend(_deltas("ok"))
    body = _chat_body(max_tokens=None, temperature=0.5, top_k=-1, seed=3, stop="\n")
    body["messages"] = [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]
    _post(backend, "/v1/chat/completions", body)
    (req,) = backend.requests
    assert req.request_id.startswith("chatcmpl-")
    assert TOKENIZER.decode(req.prompt_token_ids) == "system: be brief\nassistant: "
    p = req.params
    assert (p.temperature, p.top_k, p.seed, p.stop) == (0.5, 0, 3, ("\n",))
    assert p.max_tokens == 256 - len(req.prompt_token_ids)  # the rest of the context


def test_null_means_the_default() -> None:
    backend = ScriptedBackend(_deltas("ok"))
    nulls = dict.fromkeys(("n", "temperature", "top_p", "stream", "stop", "logprobs", "seed"))
    r = _post(backend, "/v1/chat/completions", {**_chat_body(), **nulls})
    assert r.status_code == 200, r.text
    assert backend.requests[0].params.temperature == 1.0  # OpenAI's default


def test_default_max_tokens_is_the_rest_of_the_context_up_to_a_cap() -> None:
    body = CompletionRequest(model=MODEL, prompt="x")
    assert resolve_max_tokens(body, 10, 100) == 90
    assert resolve_max_tokens(body, 10, 100_000) == DEFAULT_MAX_TOKENS_CAP


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("messages", 0, "content"), "messages[0].content"),
        (("prompt", "list[int]", 1), "prompt"),
        (("messages", 2, "content", "list[TextPart]", 0, "text"), "messages[2].content"),
        (("stream_options", "include_usage"), "stream_options.include_usage"),
        ((), ""),
    ],
)
def test_field_path(loc: tuple[str | int, ...], path: str) -> None:
    assert field_path(loc) == path


def _chat_body(**fields: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, **fields}
    return {k: v for k, v in body.items() if v is not None}


def test_a_delta_of_several_tokens_ends_at_the_stop_string_inside_it() -> None:
    # A worker whose stream fell behind sends several tokens in one chunk.
    ids = TOKENIZER.encode("hello world and more")
    backend = ScriptedBackend([TokenDelta(ids[:3], [-0.5] * 3), TokenDelta(ids[3:], [-0.5] * 17)])
    body = {"prompt": "x", "max_tokens": 30, "stop": "wor", "logprobs": 1}
    r = _post(backend, "/v1/completions", body)
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("hello ", "stop")
    assert r.json()["usage"]["completion_tokens"] == len("hello wor")
    assert len(choice["logprobs"]["tokens"]) == len("hello wor")


def test_include_stop_str_in_output_ends_the_text_after_the_stop_string() -> None:
    body = {"prompt": "x", "max_tokens": 30, "stop": "wor"}
    for include, want in ((False, "hello "), (True, "hello wor")):
        backend = ScriptedBackend(_deltas("hello world and more"))
        r = _post(backend, "/v1/completions", {**body, "include_stop_str_in_output": include})
        assert r.json()["choices"][0]["text"] == want
