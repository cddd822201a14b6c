"""What every dataset produces: sessions of turns, each turn a prompt and an output length.

A prompt is token ids or text. Synthetic prompts are random token ids (never special tokens)
so their length is exact; /v1/completions gets them as a list of ids, which keeps lengths
and shared prefixes exact because the server does not re-tokenize. The chat endpoint, the
`text_prompts` option and conversations need text: the ids are decoded, re-encoded and
trimmed until the text is no longer than asked (random ids rarely round-trip exactly).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Prompt = str | tuple[int, ...]


class TokenizerLike(Protocol):
    """What the load generator needs of a tokenizer (engine.tokenizer.Tokenizer has it)."""

    @property
    def vocab_size(self) -> int: ...

    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Turn:
    prompt: Prompt  # conversations: the user's message (always text)
    input_len: int  # prompt tokens as built here; the server's usage count wins when given
    output_len: int


@dataclass(frozen=True, slots=True)
class Session:
    """One request, or a conversation whose turns go one after another (turn k is sent with
    the whole history once turn k-1 has finished)."""

    turns: tuple[Turn, ...]
    at: float | None = None  # seconds after the start (trace replay); None: the load decides
    conversation: bool = False


class PromptMaker:
    """Random prompts of exact token counts, as ids or as text."""

    def __init__(self, tokenizer: TokenizerLike, as_text: bool) -> None:
        self.tokenizer, self.as_text = tokenizer, as_text
        self._allowed = allowed_ids(tokenizer)

    def ids(self, rng: np.random.Generator, n: int) -> list[int]:
        return [int(t) for t in rng.choice(self._allowed, size=n)]

    def render(self, ids: Sequence[int]) -> tuple[Prompt, int]:
        """The prompt to send and its token count."""
        if not self.as_text:
            return tuple(ids), len(ids)
        text = self.text(ids)
        return text, len(self.tokenizer.encode(text))

    def text(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(ids)
        for _ in range(4):  # bounded: each pass only shortens
            again = self.tokenizer.encode(text)
            if len(again) <= len(ids):
                break
            text = self.tokenizer.decode(again[: len(ids)])
        return text


_ALLOWED: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def allowed_ids(tokenizer: TokenizerLike) -> np.ndarray:
    """Ids that are not special: those decode to nothing (skip_special_tokens). Computed once
    per tokenizer (~0.2 s for a 50k vocabulary)."""
    if tokenizer not in _ALLOWED:
        eos = set(tokenizer.eos_token_ids)
        vocab = range(tokenizer.vocab_size)
        _ALLOWED[tokenizer] = np.array([i for i in vocab if i not in eos and tokenizer.decode([i])])
    return _ALLOWED[tokenizer]


def sample_lens(rng: np.random.Generator, mean: int, range_ratio: float, n: int) -> list[int]:
    """n lengths drawn uniformly from [mean*(1-r), mean*(1+r)], at least 1."""
    low = max(1, int(mean * (1 - range_ratio)))
    high = max(low, int(mean * (1 + range_ratio)))
    return [int(x) for x in rng.integers(low, high + 1, size=n)]
