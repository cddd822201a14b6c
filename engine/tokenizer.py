"""Tokenizer and chat template, applied in one place (the router reuses this).

A Hugging Face directory brings its tokenizer files; a GGUF file carries its vocabulary,
merges and chat template in its metadata, which transformers turns into a fast tokenizer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
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
    def __init__(self, hf_tokenizer: Any, extra_eos: Sequence[int] = ()) -> None:
        self._tok = hf_tokenizer
        eos = {int(t) for t in extra_eos}
        if hf_tokenizer.eos_token_id is not None:
            eos.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        # Read once: the router checks every token-id prompt against it, and the HF
        # tokenizer's len() counts its vocabulary anew on each call.
        self.vocab_size: int = len(hf_tokenizer)

    @property
    def hf(self) -> Any:
        """The transformers tokenizer itself, for libraries that take one (bench/)."""
        return self._tok

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` underneath, for incremental decoding (detokenize.py)."""
        return self._tok.backend_tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def use_chat_template(self, template: str) -> None:
        """Apply `template` (Jinja, as a tokenizer_config.json holds it) instead of the
        model's own; raises ValueError, saying why, when it cannot render a chat."""
        self._tok.chat_template = template
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
        if not self._tok.chat_template:
            raise ValueError("this model has no chat template; send a plain completion instead")
        text = self._tok.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=True,
            **(template_kwargs or {}),
        )
        return self.encode(text)


def load_tokenizer(model_path: str | Path, extra_eos: Sequence[int] = ()) -> Tokenizer:
    from transformers import AutoTokenizer  # heavy import, only when needed

    p = Path(model_path).expanduser()
    try:
        tok = _gguf_tokenizer(p) if p.suffix == ".gguf" else AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{p}: cannot load a tokenizer ({e})") from None
    return Tokenizer(tok, extra_eos)


def _gguf_tokenizer(path: Path) -> Any:
    """Building a fast tokenizer from GGUF metadata takes ~10 s, so the result is saved
    once per file version (name, size, mtime) in the model cache and loaded from there."""
    from transformers import AutoTokenizer

    st = path.stat()
    cached = model_cache_dir() / "tokenizers" / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"
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
