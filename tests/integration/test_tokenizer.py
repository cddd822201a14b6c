"""The GGUF's tokenizer and chat template, converted once and then loaded from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tokenizer import load_tokenizer

TEXTS = ["What is the capital of France?", "Héllo wörld 🌍\n\tcode: x = [1, 2]", "  spaces  "]


@pytest.mark.slow
def test_cached_tokenizer_equals_the_converted_one(
    smollm_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_MODEL_CACHE", str(tmp_path))
    fresh = load_tokenizer(smollm_path)  # converted from GGUF metadata, then saved
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    cached = load_tokenizer(smollm_path)
    for text in TEXTS:
        ids = fresh.encode(text)
        assert cached.encode(text) == ids
        assert fresh.decode(ids) == text
    chat = [{"role": "user", "content": TEXTS[0]}]
    prompt = fresh.apply_chat_template(chat)
    assert cached.apply_chat_template(chat) == prompt
    rendered = fresh.decode(prompt)
    assert rendered.endswith("assistant\n") and TEXTS[0] in rendered
    assert fresh.eos_token_ids == cached.eos_token_ids == (2,)  # <|im_end|>
