"""The logprobs of a prompt's own tokens (vLLM's `prompt_logprobs`, what completions' `echo`
with `logprobs` shows): position p's logits score prompt token p + 1.

The runner returns those rows beside the sampling ones (engine/runner.py's order: each
chunk's `prompt_rows`, then its last row if it samples). Here they are scored and recorded
on their request, and the sampling rows go on to the sampler. A request scored again after
a preemption (its prompt recomputed) keeps what it has: each position is recorded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.scheduler import ScheduledChunk

# log-softmax over this many rows at a time: a 1,024-token chunk's float32 logits over a
# 49,152-token vocabulary are 200 MB, and their log-softmax would be 200 MB more
_SLICE = 128


def score_prompts(chunks: Sequence[ScheduledChunk], logits: torch.Tensor) -> torch.Tensor:
    """Record each scored chunk's prompt logprobs on its request; return the rows that
    sample, in their chunks' order."""
    sampling: list[int] = []
    row = 0
    for c in chunks:
        rows = c.prompt_rows
        if rows:
            _record(c, logits[row : row + len(rows)])
            row += len(rows)
        if c.samples:
            sampling.append(row)
            row += 1
    if len(sampling) == logits.shape[0]:
        return logits
    return logits[torch.tensor(sampling, dtype=torch.long)]


def _record(chunk: ScheduledChunk, logits: torch.Tensor) -> None:
    req, rows = chunk.request, chunk.prompt_rows
    k = req.params.prompt_logprobs or 0
    for lo in range(0, len(rows), _SLICE):
        positions = rows[lo : lo + _SLICE]
        if positions.stop <= len(req.prompt_logprobs):
            continue  # recorded before a preemption
        lp = torch.log_softmax(logits[lo : lo + len(positions)].float(), dim=-1)
        nxt = torch.tensor(
            req.prompt_token_ids[positions.start + 1 : positions.stop + 1], device=lp.device
        )
        chosen = lp.gather(1, nxt[:, None])[:, 0].tolist()
        tops: list[tuple[tuple[int, float], ...]] = [()] * len(positions)
        if k:
            values, ids = lp.topk(k, dim=-1)
            tops = [
                tuple(zip(i, v, strict=True))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        for p, value, top in zip(positions, chosen, tops, strict=True):
            if p == len(req.prompt_logprobs):  # the next one not recorded yet
                req.prompt_logprobs.append(value)
                if k:
                    req.prompt_top_logprobs.append(top)
