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


def test_a_deferred_tokenizer_is_the_same_vocabulary_and_loads_transformers_when_used(
    smollm_path: Path,
) -> None:
    """What a worker loads (`deferred=True`): the size, EOS ids and `tokenizers` object
    of the full load, read from tokenizer.json; transformers' tokenizer on first use."""
    full = load_tokenizer(smollm_path, extra_eos=(7,))  # converts once, if need be
    light = load_tokenizer(smollm_path, extra_eos=(7,), deferred=True)
    assert light._tok is None  # nothing of transformers loaded for it yet
    assert (light.vocab_size, light.eos_token_ids) == (full.vocab_size, full.eos_token_ids)
    assert light.eos_token_ids == (2, 7)
    assert light.backend.to_str() == full.backend.to_str()
    assert light._tok is None
    assert [light.encode(t) for t in TEXTS] == [full.encode(t) for t in TEXTS]  # loads it
    assert light._tok is not None


def test_incremental_text_equals_whole_decode(smollm_path: Path) -> None:
    """The router's O(1)-per-token text (DecodeStream) is the text a whole decode gives,
    for real text, special tokens (skipped) and random ids (partial characters)."""
    import random

    from engine.detokenize import DecodeStreamDecoder, IncrementalText

    tok = load_tokenizer(smollm_path)
    rng = random.Random(0)
    eos = tok.eos_token_ids[0]
    samples = [tok.encode(t) + [eos] for t in TEXTS]
    samples += [[rng.randrange(tok.vocab_size) for _ in range(200)] for _ in range(5)]
    for ids in samples:
        text = IncrementalText(DecodeStreamDecoder(tok.backend))
        pieces = []
        for n, t in enumerate(ids):
            text.add([t])
            pieces.append(text.take(final=n == len(ids) - 1))
        assert "".join(pieces) == tok.decode(ids)
