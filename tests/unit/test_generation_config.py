"""vLLM's --generation-config (services/router/generation_config.py): a model's own
sampling defaults apply to what a request leaves out, never to what it sends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.router.app import create_app
from services.router.generation_config import load_defaults
from services.router.metrics import RouterMetrics
from services.router.options import add_router_args, router_options
from tests.unit.test_router_app import MODEL, TOKENIZER, ScriptedBackend, _deltas

CONFIG = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1,
          "max_new_tokens": 7, "do_sample": True, "bos_token_id": 1}  # fmt: skip


def _model_dir(tmp_path: Path, config: dict[str, Any] | None = CONFIG) -> Path:
    (tmp_path / "model.gguf").write_bytes(b"")
    if config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(config))
    return tmp_path / "model.gguf"


def test_auto_reads_the_models_folder_and_maps_vllms_fields(tmp_path: Path) -> None:
    got = load_defaults("auto", str(_model_dir(tmp_path)))
    assert got == {"temperature": 0.6, "top_p": 0.9, "top_k": 20,
                   "repetition_penalty": 1.1, "max_tokens": 7}  # fmt: skip
    assert load_defaults("vllm", str(_model_dir(tmp_path))) == {}


def test_auto_without_a_file_is_none_and_a_named_folder_must_have_one(tmp_path: Path) -> None:
    assert load_defaults("auto", str(_model_dir(tmp_path, None))) == {}
    with pytest.raises(ValueError, match="no generation_config.json"):
        load_defaults(str(tmp_path), "unused")


def test_values_no_request_could_send_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="temperature"):
        load_defaults("auto", str(_model_dir(tmp_path, {"temperature": 9})))


def test_the_flag_reaches_the_options_and_fails_the_start_clearly(tmp_path: Path) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    add_router_args(ap)
    model = str(_model_dir(tmp_path))
    assert router_options(ap.parse_args([]), model, "redis://x").generation_defaults["top_k"] == 20
    args = ap.parse_args(["--generation-config", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--generation-config"):
        router_options(args, model, "redis://x")


def _params(body: dict[str, Any], defaults: dict[str, Any]) -> Any:
    backend = ScriptedBackend(_deltas("ok"))

    async def go() -> httpx.Response:
        app = create_app(
            backend, TOKENIZER, MODEL, 256, RouterMetrics(MODEL), generation_defaults=defaults
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            return await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", **body})

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    return backend.requests[0].params


def test_defaults_fill_what_a_request_leaves_out_only(tmp_path: Path) -> None:
    defaults = load_defaults("auto", str(_model_dir(tmp_path)))
    p = _params({}, defaults)
    assert (p.temperature, p.top_k, p.max_tokens) == (pytest.approx(0.6), 20, 7)
    assert p.repetition_penalty == pytest.approx(1.1)
    p = _params({"temperature": 0, "max_tokens": 3, "repetition_penalty": 1.0}, defaults)
    assert (p.temperature, p.max_tokens, p.repetition_penalty) == (0.0, 3, 1.0)
    p = _params({"temperature": None}, defaults)  # null is absent, as OpenAI reads it
    assert p.temperature == pytest.approx(0.6)
    assert _params({}, {}).temperature == 1.0  # OpenAI's default without a config
