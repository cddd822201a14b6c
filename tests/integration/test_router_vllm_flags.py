"""What users carry over from `vllm serve`, over real HTTP in front of a real engine (a tiny
random-weight Llama with the default model's vocabulary): several served model names,
CORS for browsers (`--allowed-origins`), `VLLM_API_KEY`, `--chat-template`, and the
`/version` and `/detokenize` endpoints."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import CacheConfig, Engine, EngineConfig
from engine.tokenizer import Tokenizer, load_tokenizer
from services.router.api_keys import ApiKeys
from services.router.app import create_app
from services.router.metrics import RouterMetrics
from services.router.options import add_router_args, router_options
from tests.helpers.asgi_server import serve
from tests.helpers.engine_backend import EngineBackend
from tests.helpers.hf_reference import build_tiny_checkpoint

NAMES = ("smol-135m", "smol", "gpt-4o-mini")  # the first is the one answers carry
KEY = "sk-vllm-flags"
ORIGIN = "https://chat.example.com"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Iterator[str]:
    root = tmp_path_factory.mktemp("vllm-flags")
    path = build_tiny_checkpoint("llama", root / "llama", vocab_size=49152)
    cfg = EngineConfig(model=str(path), dtype="float32", cache=CacheConfig(num_blocks=256))
    backend = EngineBackend(Engine(cfg, load_tokenizer_files=False))
    app = create_app(
        backend,
        tokenizer,
        NAMES[0],
        512,
        RouterMetrics(NAMES[0]),
        ApiKeys((KEY,)),
        aliases=NAMES[1:],
        allowed_origins=(ORIGIN,),
    )
    try:
        with serve(app) as u:
            yield u
    finally:
        backend.close()


def test_every_served_name_is_listed_and_served_and_answers_carry_the_first(url: str) -> None:
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in models] == list(NAMES)
    for name in NAMES:
        body = {"model": name, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == NAMES[0]
    assert httpx.get(f"{url}/v1/models/smol", headers=AUTH).json()["id"] == "smol"
    r = httpx.post(f"{url}/v1/completions", json={**body, "model": "other"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert all(n in r.json()["error"]["message"] for n in NAMES)


def test_a_browsers_preflight_passes_without_a_key_from_an_allowed_origin_only(url: str) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    r = httpx.options(f"{url}/v1/chat/completions", headers={"Origin": ORIGIN, **ask})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        f"{url}/v1/chat/completions", headers={"Origin": "https://evil.example", **ask}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # The call itself still needs the key, and carries the header for the browser.
    r = httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN


def test_version_and_detokenize(url: str, tokenizer: Tokenizer) -> None:
    version = httpx.get(f"{url}/version", headers=AUTH).json()
    assert version == {"version": importlib.metadata.version("tandem")}
    ids = httpx.post(f"{url}/tokenize", json={"prompt": "Hello world"}, headers=AUTH).json()
    r = httpx.post(f"{url}/detokenize", json={"tokens": ids["tokens"]}, headers=AUTH)
    assert r.json() == {"prompt": "Hello world"}
    r = httpx.post(f"{url}/detokenize", json={"model": "smol", "tokens": []}, headers=AUTH)
    assert r.json() == {"prompt": ""}
    for bad in ([tokenizer.vocab_size], [-1]):
        r = httpx.post(f"{url}/detokenize", json={"tokens": bad}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = httpx.post(f"{url}/detokenize", json={"tokens": ["a"]}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# ---- the flags themselves ---------------------------------------------------------------
def _options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_router_args(ap)
    return ap.parse_args(argv)


def test_vllm_api_key_is_read_beside_tandems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_API_KEY", "sk-a")
    monkeypatch.setenv("VLLM_API_KEY", "sk-b,sk-a")
    opts = router_options(_options([]), "m", "redis://127.0.0.1:1")
    assert opts.api_keys.keys == ("sk-a", "sk-b")


def test_allowed_origins_take_vllms_json_list_or_commas() -> None:
    assert _options(["--allowed-origins", '["*"]']).allowed_origins == ("*",)
    assert _options(["--allowed-origins", "https://a, https://b"]).allowed_origins == (
        "https://a",
        "https://b",
    )
    with pytest.raises(SystemExit):  # argparse's refusal
        _options(["--allowed-origins", "[1, 2]"])


def test_chat_template_inline_or_from_a_file(
    tmp_path: Path, smollm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TANDEM_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    file = tmp_path / "chat.jinja"
    file.write_text(template)
    for spec in (template, str(file)):
        opts = router_options(_options(["--chat-template", spec]), "m", "redis://x:1")
        assert opts.chat_template == template
    with pytest.raises(SystemExit, match="no such file"):
        router_options(_options(["--chat-template", str(tmp_path / "nope.jinja")]), "m", "r")
    tok = load_tokenizer(smollm_path)  # its own: the template changes the object
    tok.use_chat_template(template)
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == tok.encode("<user>Hi")
    with pytest.raises(ValueError, match="cannot render"):
        tok.use_chat_template("{% for m in %}")
