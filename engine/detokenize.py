"""Text for the caller, one token at a time: incremental detokenization and stop strings.

Whoever shows text to a user owns it (the router; `Engine.generate` offline); workers
stream token ids only. Each token costs O(1): the tokenizer's `DecodeStream` decodes only
the last few tokens, and stop strings are searched in a bounded window at the end.

A stop string is never emitted, not even in part (unless `include_stop`, vLLM's
include_stop_str_in_output: the text then ends with it): text that could still grow into a stop
string is held back until the next token settles it, and so are tokens that do not yet
decode to whole characters (a UTF-8 character whose bytes span several tokens):

    settled text (whole characters)                      | pending tokens' text
    [ emitted .............. | held back: stop prefix ] | [ "\ufffd" ... held back ]

This module imports tokenizers only: the router and the CLI use it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class StepDecoder(Protocol):
    """One request's incremental decoder."""

    def step(self, token_id: int) -> str | None:
        """New whole-character text this token settles, or None while it settles none."""
        ...

    def pending(self) -> str:
        """The text of the tokens not settled yet, incomplete characters as U+FFFD."""
        ...


class DecodeStreamDecoder:
    """A `StepDecoder` over a `tokenizers.Tokenizer`, with its O(1) `DecodeStream`."""

    __slots__ = ("_pending", "_skip", "_stream", "_tok")

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        from tokenizers.decoders import DecodeStream

        self._tok = tokenizer  # a tokenizers.Tokenizer (a fast tokenizer's backend)
        self._skip = skip_special_tokens  # vLLM's default: special tokens left out of the text
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._pending: list[int] = []

    def step(self, token_id: int) -> str | None:
        text = self._stream.step(self._tok, token_id)
        if text is None:
            self._pending.append(token_id)
        else:
            self._pending.clear()
        return text

    def pending(self) -> str:
        if not self._pending:
            return ""
        return str(self._tok.decode(self._pending, skip_special_tokens=self._skip))


@dataclass(slots=True)
class IncrementalText:
    decoder: StepDecoder
    stop: tuple[str, ...] = ()
    include_stop: bool = False  # vLLM's include_stop_str_in_output: the text ends after it
    emitted: int = 0  # characters handed to the caller
    stopped_on: str | None = None
    _sent: list[str] = field(default_factory=list)  # the emitted pieces
    _recent: str = ""  # the end of the emitted text, as long as the longest stop string
    _unsent: str = ""  # settled text not emitted yet
    _pending: str = ""  # text of the tokens the decoder has not settled
    _longest: int = 0  # of the stop strings
    _prefixes: frozenset[str] = frozenset()  # every proper, non-empty stop-string prefix
    _firsts: frozenset[str] = frozenset()  # the stop strings' first characters

    def __post_init__(self) -> None:
        self._longest = max((len(s) for s in self.stop), default=0)
        self._prefixes = frozenset(s[:k] for s in self.stop for k in range(1, len(s)))
        self._firsts = frozenset(s[0] for s in self.stop if s)

    @property
    def text(self) -> str:
        """Everything decoded so far (truncated at a stop string). O(length): for tests."""
        return "".join(self._sent) + self._unsent + self._pending

    def add(self, token_ids: Sequence[int]) -> bool:
        """Take a request's new tokens; True when a stop string appeared (the text then
        ends before it, and later tokens are ignored)."""
        if self.stopped_on is not None:
            return True
        for t in token_ids:
            piece = self.decoder.step(t)
            if piece is None:
                self._pending = self.decoder.pending()
            else:
                self._unsent += piece
                self._pending = ""
            if self.stop and self._find_stop():
                return True
        return False

    def _find_stop(self) -> bool:
        # Only the unsent text and the end of the sent text can hold a new match.
        window = self._recent + self._unsent + self._pending
        hits = [(i, s) for s in self.stop if (i := window.find(s)) >= 0]
        if not hits:
            return False
        i, s = min(hits)
        # The hold-back keeps a stop's start from being emitted, so i >= len(_recent).
        cut = max(0, i - len(self._recent)) + (len(s) if self.include_stop else 0)
        self._unsent = (self._unsent + self._pending)[:cut]
        self._pending, self.stopped_on = "", s
        return True

    def take(self, final: bool) -> str:
        """New text safe to emit; everything left when `final`."""
        if final:
            new, self._unsent, self._pending = self._unsent + self._pending, "", ""
        else:
            keep = self._stop_prefix() if self.stop else 0
            new = self._unsent[: len(self._unsent) - keep]
            self._unsent = self._unsent[len(new) :]
        if new:
            self._sent.append(new)
            self.emitted += len(new)
            if self._longest:
                self._recent = (self._recent + new)[-self._longest :]
        return new

    def _stop_prefix(self) -> int:
        """Length of the longest end of the settled text that could start a stop string
        (at most the longest stop string less one: a whole one would have stopped us)."""
        tail = (self._recent + self._unsent)[-(self._longest - 1) :] if self._longest > 1 else ""
        for j, ch in enumerate(tail):  # leftmost first: the longest candidate
            if ch in self._firsts and tail[j:] in self._prefixes:
                return min(len(tail) - j, len(self._unsent))
        return 0
