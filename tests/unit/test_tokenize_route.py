"""POST /tokenize: the ids the completion and chat endpoints would run, in vLLM's shape."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.router.api_keys import ApiKeys
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from tests.unit.test_router_app import MODEL, TOKENIZER, ScriptedBackend, _deltas, _post


def _tokenize(body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async def post() -> httpx.Response:
        app = create_app(
            ScriptedBackend([]), TOKENIZER, MODEL, 256, RouterMetrics(MODEL), ApiKeys(("key",))
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            auth = {"Authorization": "Bearer key"} if headers is None else headers
            return await http.post("/tokenize", json=body, headers=auth)

    return asyncio.run(post())


def test_a_text_prompt_is_tokenized_as_the_completions_endpoint_does() -> None:
    r = _tokenize({"prompt": "héllo"})  # the byte tokenizer: é is two tokens
    assert r.status_code == 200, r.text
    assert r.json() == {"tokens": TOKENIZER.encode("héllo"), "count": 6, "max_model_len": 256}
    assert _tokenize({"model": MODEL, "prompt": ""}).json()["count"] == 0


def test_messages_get_the_chat_template_as_the_chat_endpoint_does() -> None:
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = _tokenize({"messages": messages, "add_special_tokens": False})  # vLLM's field: ignored
    backend = ScriptedBackend(_deltas("ok"))
    _post(backend, "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
    assert r.json()["tokens"] == backend.requests[0].prompt_token_ids
    assert TOKENIZER.decode(r.json()["tokens"]) == "system: be brief\nuser: hi\nassistant: "


def test_bad_bodies_are_openai_errors() -> None:
    r = _tokenize({"model": "other", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for body in ({}, {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}):
        r = _tokenize(body)
        assert r.status_code == 400 and "exactly one" in r.json()["error"]["message"]
    assert _tokenize({"prompt": 3}).status_code == 400  # strict, as the OpenAI bodies
    assert _tokenize({"prompt": "x"}, headers={}).status_code == 401  # behind the API key
