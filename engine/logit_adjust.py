"""A request's changes to its logits before sampling: logit_bias, then the repetition,
frequency and presence penalties, in vLLM's order and with its (and OpenAI's) arithmetic:

    logits[t] += bias[t]                                   for t in logit_bias
    logits[t] = logits[t] / r if logits[t] > 0 else * r    for t in prompt + output (r > 0)
    logits[t] -= count[t] * frequency + (count[t] > 0) * presence   count: t in the output

The repetition penalty is Hugging Face's `RepetitionPenaltyLogitsProcessor` (over every
token so far, prompt included); frequency and presence count the output only, as OpenAI
defines them. Greedy decoding takes the argmax of the adjusted logits; the logprobs a
request reports stay the model's own (as vLLM's default `raw_logprobs`).

State is per request and grows with it: the output's token counts are kept up to date one
new token at a time, and the set of tokens seen (for the repetition penalty) likewise.
"""

from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams


class LogitAdjust:
    def __init__(self, params: SamplingParams, token_ids: list[int], num_prompt: int) -> None:
        """`token_ids`: the request's prompt + output so far, a list the engine appends to;
        its first `num_prompt` are the prompt."""
        self.params = params
        self._tokens = token_ids
        self._num_prompt = num_prompt
        self._counted = num_prompt  # token_ids before this index are in the state below
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.logit_bias:
            ids, values = zip(*params.logit_bias, strict=True)
            self._bias = torch.tensor(ids, dtype=torch.long), torch.tensor(values)
        self._seen: torch.Tensor | None = None  # [vocab] bool: in prompt + output
        self._counts: torch.Tensor | None = None  # [vocab] float32: times in the output

    @staticmethod
    def wanted(params: SamplingParams) -> bool:
        return bool(params.logit_bias) or params.penalized

    def apply(self, logits: torch.Tensor) -> None:
        """logits: [vocab] float32, changed in place."""
        p = self.params
        if self._bias is not None:
            logits.index_add_(0, self._bias[0], self._bias[1])
        if not p.penalized:
            return
        self._catch_up(logits.shape[0])
        if p.repetition_penalty != 1.0:
            assert self._seen is not None
            seen = logits[self._seen]
            r = p.repetition_penalty
            logits[self._seen] = torch.where(seen < 0, seen * r, seen / r)
        if p.frequency_penalty or p.presence_penalty:
            assert self._counts is not None
            logits -= self._counts * p.frequency_penalty
            logits -= (self._counts > 0).float() * p.presence_penalty

    def _catch_up(self, vocab: int) -> None:
        """Count the tokens added since the last step (the whole prompt, the first time)."""
        if self._seen is None:
            self._seen = torch.zeros(vocab, dtype=torch.bool)
            self._seen[torch.tensor(self._tokens[: self._num_prompt], dtype=torch.long)] = True
            self._counts = torch.zeros(vocab)
        assert self._counts is not None
        new = self._tokens[self._counted :]
        if new:
            ids = torch.tensor(new, dtype=torch.long)
            self._seen[ids] = True
            self._counts.index_add_(0, ids, torch.ones(len(new)))
            self._counted = len(self._tokens)
