"""Tokenizer and chat template, applied in one place (the router reuses this).

A Hugging Face directory brings its tokenizer files; a GGUF file carries its vocabulary,
merges and chat template in its metadata, which transformers turns into a fast tokenizer.

A worker needs only the vocabulary (its size, the EOS id, the `tokenizers` object that
grammars and incremental text read): `load_tokenizer(..., deferred=True)` reads those from
tokenizer.json in ~0.1 s and imports transformers (~1 s, a worker start's largest part
after torch) only when text is encoded, decoded or templated.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.env import model_cache_dir
from engine.model.config import ModelLoadError

# transformers' apply_chat_template takes these as its own arguments, not the template's
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation", "messages", "tools", "documents", "chat_template",
        "add_generation_prompt", "continue_final_message", "tokenize", "padding",
        "truncation", "max_length", "return_tensors", "return_dict",
        "return_assistant_tokens_mask", "tokenizer_kwargs",
    }
)  # fmt: skip


class Tokenizer:
    def __init__(
        self,
        backend: Any,
        eos_token_id: int | None,
        load_hf: Callable[[], Any],
        extra_eos: Sequence[int] = (),
    ) -> None:
        """`backend`: the `tokenizers.Tokenizer`; `load_hf()`: the transformers tokenizer
        over it, called when first needed (`from_hf` when it is there already)."""
        self._tok: Any = None
        self._load, self._backend = load_hf, backend
        eos = {int(t) for t in extra_eos}
        if eos_token_id is not None:
            eos.add(int(eos_token_id))
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        # Read once: the router checks every token-id prompt against it (the HF
        # tokenizer's len(), this very count, counts it anew on each call).
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_hf(cls, hf_tokenizer: Any, extra_eos: Sequence[int] = ()) -> Tokenizer:
        tok = cls(
            hf_tokenizer.backend_tokenizer,
            hf_tokenizer.eos_token_id,
            lambda: hf_tokenizer,
            extra_eos,
        )
        tok._tok = hf_tokenizer
        return tok

    @property
    def hf(self) -> Any:
        """The transformers tokenizer itself, for libraries that take one (bench/)."""
        if self._tok is None:
            self._tok = self._load()
        return self._tok

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` underneath, for incremental decoding (detokenize.py)."""
        return self._backend

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))

    def use_chat_template(self, template: str) -> None:
        """Apply `template` (Jinja, as a tokenizer_config.json holds it) instead of the
        model's own; raises ValueError, saying why, when it cannot render a chat."""
        self.hf.chat_template = template
        try:
            self.apply_chat_template([{"role": "user", "content": "Hello"}])
        except Exception as e:  # jinja2's errors, or a template that raises on purpose
            raise ValueError(f"the chat template cannot render a chat: {e}") from None

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        template_kwargs: Mapping[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """`template_kwargs`: more variables for the template (vLLM's chat_template_kwargs,
        e.g. Qwen3's enable_thinking); the caller keeps out apply_chat_template's own
        arguments (RESERVED_TEMPLATE_KWARGS). `tools`: OpenAI's tool definitions, for a
        template that renders them (one that does not leaves them out)."""
        if not self.hf.chat_template:
            raise ValueError("this model has no chat template; send a plain completion instead")
        text = self.hf.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=True,
            **(template_kwargs or {}),
        )
        return self.encode(text)


def load_tokenizer(
    model_path: str | Path, extra_eos: Sequence[int] = (), deferred: bool = False
) -> Tokenizer:
    """`deferred`: transformers' tokenizer only when first needed, where the files allow
    (a tokenizer.json naming its EOS token beside it; else loaded now, as without)."""
    p = Path(model_path).expanduser()
    if deferred and (found := _deferred(p, extra_eos)) is not None:
        return found
    return Tokenizer.from_hf(_load_hf(p), extra_eos)


def _load_hf(p: Path) -> Any:
    from transformers import AutoTokenizer  # heavy import, only when needed

    try:
        return _gguf_tokenizer(p) if p.suffix == ".gguf" else AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{p}: cannot load a tokenizer ({e})") from None


def _deferred(p: Path, extra_eos: Sequence[int]) -> Tokenizer | None:
    """From the files transformers would read, the vocabulary alone; None where they are
    not all there (a GGUF not converted yet, a slow tokenizer's files)."""
    from tokenizers import Tokenizer as Backend

    try:  # a missing file falls through to the full load, which says what is missing
        files = _gguf_cache_dir(p) if p.suffix == ".gguf" else p
        config = json.loads((files / "tokenizer_config.json").read_text())
        backend = Backend.from_file(str(files / "tokenizer.json"))
    except (OSError, ValueError):
        return None
    eos = config.get("eos_token")
    if isinstance(eos, dict):  # an AddedToken, as older transformers wrote it
        eos = eos.get("content")
    eos_id = backend.token_to_id(eos) if isinstance(eos, str) else None
    if eos_id is None:
        return None
    return Tokenizer(backend, eos_id, lambda: _load_hf(p), extra_eos)


def _gguf_tokenizer(path: Path) -> Any:
    """Building a fast tokenizer from GGUF metadata takes ~10 s, so the result is saved
    once per file version (name, size, mtime) in the model cache and loaded from there."""
    from transformers import AutoTokenizer

    cached = _gguf_cache_dir(path)
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(cached)  # atomic; a concurrent writer may have won, which is fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def _gguf_cache_dir(path: Path) -> Path:
    """Where a GGUF's converted tokenizer is saved: one per file version."""
    st = path.stat()
    return model_cache_dir() / "tokenizers" / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"
