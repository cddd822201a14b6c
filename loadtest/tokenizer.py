"""The tokenizer that makes prompts token-exact, loaded from a local path (`--tokenizer`).

loadtest is a black-box client of any OpenAI server, so it loads tokenizers itself rather
than through Tandem's engine: a Hugging Face directory, a tokenizer.json file, or a GGUF file
(its vocabulary, merges and chat template, which transformers turns into a fast tokenizer).
`tandem bench` passes the default model's GGUF when no tokenizer is given.

It encodes and decodes as Tandem's router does (no added special tokens; special tokens
skipped when decoding), so the counts we build are the counts the server sees.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class HFTokenizer:
    """A transformers tokenizer behind loadtest's `TokenizerLike`."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer
        eos = hf_tokenizer.eos_token_id
        self.eos_token_ids: tuple[int, ...] = () if eos is None else (int(eos),)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)  # added tokens included, unlike the HF attribute of that name

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._tok.chat_template:
            raise ValueError("this tokenizer has no chat template; use the completions endpoint")
        text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)


def load_tokenizer(path: str | Path, cache_dir: Path | None = None) -> HFTokenizer:
    """A tokenizer from a directory, a tokenizer.json or a .gguf; ValueError if it cannot."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # heavy: only when asked

    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"tokenizer {p} does not exist")
    try:
        if p.suffix == ".gguf":
            return HFTokenizer(_gguf_tokenizer(p, cache_dir or _default_cache()))
        if p.is_file():
            return HFTokenizer(PreTrainedTokenizerFast(tokenizer_file=str(p)))
        return HFTokenizer(AutoTokenizer.from_pretrained(str(p)))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: cannot load a tokenizer ({e})") from None


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tandem-loadtest" / "tokenizers"


def _gguf_tokenizer(path: Path, cache_dir: Path) -> Any:
    """Converting a GGUF vocabulary takes ~10 s, so the result is saved once per file version
    (name, size, mtime) and loaded from there next time."""
    from transformers import AutoTokenizer

    st = path.stat()
    cached = cache_dir / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    try:
        tok.save_pretrained(str(tmp))
        tmp.rename(cached)  # atomic; a concurrent writer may have won, which is fine
    except OSError:  # a read-only cache costs time, not correctness
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
