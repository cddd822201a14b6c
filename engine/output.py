"""Text for the caller: incremental detokenization and stop strings.

A stop string is never emitted, not even in part: text that could still grow into a stop
string is held back until the next token settles it, and so is a trailing U+FFFD (a UTF-8
character whose bytes span several tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(slots=True)
class TextStream:
    decoder: Decoder
    stop: tuple[str, ...] = ()
    text: str = ""  # everything decoded so far (truncated at a stop string)
    emitted: int = 0  # characters of `text` handed to the caller
    stopped_on: str | None = None

    def update(self, output_ids: Sequence[int]) -> bool:
        """Decode the output so far; True when a stop string appeared."""
        self.text = self.decoder.decode(output_ids)
        if not self.stop:
            return False
        window = max(0, self.emitted - max(len(s) for s in self.stop))
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, window)) >= 0]
        if not hits:
            return False
        i, s = min(hits)
        self.text, self.stopped_on = self.text[:i], s
        return True

    def take(self, final: bool) -> str:
        """New text safe to emit; everything left when `final`."""
        end = len(self.text) if final else len(self.text) - self._held_back()
        new = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return new

    def _held_back(self) -> int:
        """Characters at the end that may still change: an incomplete character, and
        before it the longest tail that could be the start of a stop string."""
        settled = self.text.rstrip("\ufffd")
        incomplete = len(self.text) - len(settled)
        longest = max((len(s) for s in self.stop), default=1) - 1
        for k in range(min(longest, len(settled)), 0, -1):
            tail = settled[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return incomplete + k
        return incomplete


@dataclass(slots=True)
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    new_logprobs: list[float] = field(default_factory=list)
