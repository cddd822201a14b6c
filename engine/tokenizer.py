"""Tokenizer and chat template, applied in one place (the router reuses this).

A Hugging Face directory brings its tokenizer files; a GGUF file carries its vocabulary,
merges and chat template in its metadata, which transformers turns into a fast tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.model.config import ModelLoadError


class Tokenizer:
    def __init__(self, hf_tokenizer: Any, extra_eos: Sequence[int] = ()) -> None:
        self._tok = hf_tokenizer
        eos = {int(t) for t in extra_eos}
        if hf_tokenizer.eos_token_id is not None:
            eos.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._tok.chat_template:
            raise ValueError("this model has no chat template; send a plain completion instead")
        text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)


def load_tokenizer(model_path: str | Path, extra_eos: Sequence[int] = ()) -> Tokenizer:
    from transformers import AutoTokenizer  # heavy import, only when needed

    p = Path(model_path).expanduser()
    try:
        if p.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            tok = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{p}: cannot load a tokenizer ({e})") from None
    return Tokenizer(tok, extra_eos)
