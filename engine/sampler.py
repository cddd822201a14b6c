"""Pick the next token of each sampling sequence from its logits.

A request's logit changes come first (logit_bias and penalties: engine/logit_adjust.py), then
its grammar's mask (structured output: engine/guided.py).
Greedy rows then take the argmax; the others apply temperature, then min-p, top-k and top-p
(vLLM's order), and draw from what remains with their own generator (seeded per request,
so the same seed gives the same tokens regardless of what else is in the batch). The
logprob reported is the model's own (before any change, temperature or truncation), as
OpenAI reports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.guided import Constraint
from engine.logit_adjust import LogitAdjust
from engine.request import TopLogprobs
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SampleRow:
    params: SamplingParams
    generator: torch.Generator
    banned: tuple[int, ...] = ()  # token ids not allowed yet (EOS before min_tokens)
    adjust: LogitAdjust | None = None  # logit_bias and penalties, where asked for
    constraint: Constraint | None = None  # structured output's grammar, where asked for


def sample(logits: torch.Tensor, rows: Sequence[SampleRow]) -> tuple[list[int], list[float | None]]:
    """logits: [n, vocab] float32, one row per entry of `rows`."""
    raw = logits
    changed = [r.adjust is not None or r.constraint is not None for r in rows]
    if any(changed):
        logits = logits.clone()
        for i, r in enumerate(rows):
            if changed[i]:
                _change_on_host(logits[i], r, raw[i])
    # A row with bans alone (EOS before min_tokens: every row of such a batch, every step)
    # is not copied: its draw bans on its own copy, and a greedy row looks again only
    # when its best token is banned.
    token_list = _argmax(logits).tolist()
    for i, r in enumerate(rows):
        banned = () if changed[i] else r.banned  # a changed row has its bans in already
        if not r.params.greedy or token_list[i] in banned:
            token_list[i] = _draw(logits[i], r.params, r.generator, banned)
    logprobs: list[float | None] = [None] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs]
    if wanted:
        idx = torch.tensor(wanted, device=raw.device)
        chosen = torch.tensor([token_list[i] for i in wanted], device=raw.device)
        lp = torch.log_softmax(raw[idx], dim=-1).gather(1, chosen[:, None]).squeeze(1)
        for i, v in zip(wanted, lp.tolist(), strict=True):
            logprobs[i] = v
    return token_list, logprobs


def _change_on_host(row: torch.Tensor, r: SampleRow, raw: torch.Tensor) -> None:
    """`_change`, where a request's bias, token counts and grammar mask live: on the CPU. A
    GPU's row goes there and back (rows with changes only: one row of floats each way)."""
    if row.is_cpu:
        _change(row, r, raw)
        return
    host = row.cpu()
    _change(host, r, raw.cpu())
    row.copy_(host)


def _change(row: torch.Tensor, r: SampleRow, raw: torch.Tensor) -> None:
    """A request's changes to its logits [vocab], in place. Where together they leave no
    token at all (a grammar whose only next tokens are banned until min_tokens, say), the
    row goes back to the model's own: one step's answer breaks the grammar (its
    constraint logs it) rather than a draw from nothing failing every request of the step."""
    if r.adjust is not None:
        r.adjust.apply(row)
    if r.banned:
        row[list(r.banned)] = float("-inf")
    if r.constraint is not None and (allowed := r.constraint.allowed()) is not None:
        row.masked_fill_(~allowed, float("-inf"))
    if bool(torch.isneginf(row).all()):
        log.warning("a request's bans and grammar left no token: its step samples freely")
        row.copy_(raw)


def top_logprobs(logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[TopLogprobs]:
    """The k likeliest tokens of each row that asks for them (k = its top_logprobs), with
    the model's own logprobs, likeliest first; () for the others."""
    tops: list[TopLogprobs] = [()] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.top_logprobs]
    if not wanted:
        return tops
    k = max(rows[i].params.top_logprobs for i in wanted)
    values, ids = torch.log_softmax(logits[torch.tensor(wanted)], dim=-1).topk(k, dim=-1)
    for row, i in enumerate(wanted):
        n = rows[i].params.top_logprobs
        tops[i] = tuple(zip(ids[row, :n].tolist(), values[row, :n].tolist(), strict=True))
    return tops


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """The first index of each row's maximum. On CPU through numpy: torch's CPU argmax is
    not vectorised (~100 us for a 49,152-token row on a 2-core VM; numpy ~5 us), and it
    runs for every row of every step. Both return the first maximal index."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def _draw(
    row: torch.Tensor, p: SamplingParams, gen: torch.Generator, banned: tuple[int, ...] = ()
) -> int:
    """A token from `row` [vocab] with `banned` ones left out: the best for a greedy request,
    a draw after temperature, min-p, top-k and top-p for the others."""
    if p.greedy:
        allowed = row.clone()
        allowed[list(banned)] = float("-inf")
        return int(allowed.argmax())
    scaled = row / p.temperature
    if banned:
        scaled[list(banned)] = float("-inf")
    if p.min_p > 0.0:  # relative to the likeliest token: exp(l - max) < min_p
        scaled = scaled.masked_fill(scaled - scaled.max() < math.log(p.min_p), float("-inf"))
    if p.top_k and p.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = probs.cumsum(-1) - probs >= p.top_p
        sorted_logits[drop] = float("-inf")
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    # drawn where the request's generator lives (the CPU), so a seed gives the same draws
    # whatever the device
    probs = torch.softmax(scaled, dim=-1).to(gen.device)
    return int(torch.multinomial(probs, 1, generator=gen).item())
