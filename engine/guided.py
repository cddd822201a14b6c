"""Structured output: a request's grammar enforced on its tokens, through llguidance.

A request may ask for JSON of a schema, any JSON object, text matching a regex, or one of
a list of strings (`GuidedSpec`, engine/sampling_params.py). Each such request gets a
`Constraint`: an llguidance matcher over the model's tokenizer that, before each sample,
gives the set of tokens that keep the output inside the grammar; the sampler sets every
other token's logit to -inf, after the request's bias and penalties and before greedy or
sampled choice. Once the grammar is complete, the request stops (finish reason `stop`).

Why llguidance (vLLM's `guidance` backend) over xgrammar: both install here; measured on
this machine with SmolLM2's 49,152-token vocabulary (`make bench-grammar`,
docs/benchmarks.md) xgrammar's masks cost less a token (means 5-12 us against 13-105 us,
llguidance's first mask of a request ~1.5 ms), but it compiles each new schema first
(5-6 ms for small ones, on the engine's thread: a stall for every request in the batch)
and pulls in triton; llguidance starts a request in under a millisecond with no compile
and no dependencies. At batch 1 its masks are under 1% of a decode step; at 32 rows all
constrained, ~5%. The choice is contained here and in engine/grammar.py.

The matcher follows the request's own token list: tokens sampled elsewhere (the prefill
worker's first token) are consumed before the next mask, so a request's constraint holds
across the prefill -> decode hand-off.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.grammar import grammar_of, unenforceable
from engine.sampling_params import GuidedSpec

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

log = logging.getLogger(__name__)


class Grammars:
    """One engine's llguidance tokenizer (built on first use: ~0.5 s for a 50k vocabulary)
    and the constraints of its requests."""

    def __init__(self, backend: Any, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        """backend: the model's `tokenizers.Tokenizer`."""
        self._backend, self._vocab, self._eos = backend, vocab_size, list(eos_token_ids)
        self._tokenizer: LLTokenizer | None = None

    def constraint(self, spec: GuidedSpec, token_ids: list[int], num_prompt: int) -> Constraint:
        from llguidance import LLMatcher, LLTokenizer

        if self._tokenizer is None:
            json_text = self._backend.to_str()
            self._tokenizer = LLTokenizer(json_text, n_vocab=self._vocab, eos_token=self._eos)
        matcher = LLMatcher(self._tokenizer, grammar_of(spec), log_level=0)
        if matcher.is_error():
            raise unenforceable(spec, matcher.get_error())
        return Constraint(matcher, token_ids, num_prompt, self._vocab, spec.after)


class Constraint:
    """One request's grammar state, following its token list (`token_ids`, prompt first,
    which the engine appends to). With `after` (GuidedSpec's), the output is free until
    those tokens appear in it, and the grammar holds what follows them."""

    def __init__(
        self,
        matcher: LLMatcher,
        token_ids: list[int],
        num_prompt: int,
        vocab: int,
        after: tuple[int, ...] = (),
    ) -> None:
        self._matcher = matcher
        self._tokens = token_ids
        # token_ids before this index are in the matcher, or (None) the grammar has not
        # started: `after` is looked for from `_searched` on
        self._consumed: int | None = None if after else num_prompt
        self._after, self._num_prompt, self._searched = after, num_prompt, num_prompt
        self._bits = np.full((vocab + 31) // 32, -1, dtype=np.int32)  # 1 bit a token
        self._vocab = vocab
        self.broken = False  # a token the grammar refused: no more masks (logged)

    def allowed(self) -> torch.Tensor | None:
        """[vocab] bool: the tokens that may come next; None before the grammar starts
        and once broken."""
        self._catch_up()
        if self.broken or self._consumed is None:
            return None
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab]
        return torch.from_numpy(bits.astype(bool))

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but the end may follow."""
        self._catch_up()
        return not self.broken and self._consumed is not None and self._matcher.is_stopped()

    def _catch_up(self) -> None:
        if self._consumed is None:
            self._consumed = self._start()
            if self._consumed is None:
                return
        new = self._tokens[self._consumed :]
        if not new or self.broken:
            return
        self._consumed = len(self._tokens)
        if not self._matcher.consume_tokens(new):
            self.broken = True
            log.warning("a token outside the request's grammar: %s", self._matcher.get_error())

    def _start(self) -> int | None:
        """Where the grammar starts: just after the first `after` in the output, or None
        while there is none."""
        n, tokens = len(self._after), self._tokens
        for i in range(max(self._searched - n + 1, self._num_prompt), len(tokens) - n + 1):
            if tuple(tokens[i : i + n]) == self._after:
                return i + n
        self._searched = len(tokens)
        return None
