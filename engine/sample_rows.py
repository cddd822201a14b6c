"""Each request's sampling state, by request id: its generator (seeded per request), its
logit changes (engine/logit_adjust.py) and its grammar (engine/guided.py). Built when the
request is added, brought up to date before each sample, dropped when it ends."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.guided import Constraint, Grammars
from engine.logit_adjust import LogitAdjust
from engine.request import Request, SampledToken
from engine.sampler import SampleRow, sample, top_logprobs


class SampleRows:
    def __init__(
        self, seed: int, eos_token_ids: tuple[int, ...], grammars: Grammars | None
    ) -> None:
        """`grammars`: None where the engine has no tokenizer (no structured output)."""
        self._rows: dict[str, SampleRow] = {}
        self._seeds = torch.Generator().manual_seed(seed)  # for requests without a seed
        self._eos = eos_token_ids
        self._grammars = grammars

    def add(self, req: Request) -> None:
        """Raises ValueError for a grammar that cannot be enforced here."""
        p = req.params
        adjust = (
            LogitAdjust(p, req.token_ids, req.num_prompt_tokens) if LogitAdjust.wanted(p) else None
        )
        self._rows[req.request_id] = SampleRow(
            p, self._generator(p.seed), adjust=adjust, constraint=self._constraint(req)
        )

    def drop(self, request_id: str) -> None:
        self._rows.pop(request_id, None)

    def sample(self, reqs: Sequence[Request], logits: torch.Tensor) -> dict[str, SampledToken]:
        """One token for each of `reqs` from its row of `logits` [len(reqs), vocab]."""
        rows = [self._row(r) for r in reqs]
        tokens, logprobs = sample(logits, rows)
        tops = top_logprobs(logits, rows)
        return {
            r.request_id: SampledToken(t, lp, top)
            for r, t, lp, top in zip(reqs, tokens, logprobs, tops, strict=True)
        }

    def grammar_done(self, req: Request) -> bool:
        """Its grammar is complete: nothing but the end may follow."""
        row = self._rows.get(req.request_id)
        return row is not None and row.constraint is not None and row.constraint.done

    def _row(self, req: Request) -> SampleRow:
        row = self._rows[req.request_id]
        p = req.params
        row.banned = (self._eos + p.stop_token_ids) if req.num_output_tokens < p.min_tokens else ()
        return row

    def _generator(self, seed: int | None) -> torch.Generator:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds).item())
        return torch.Generator().manual_seed(seed)

    def _constraint(self, req: Request) -> Constraint | None:
        spec = req.params.guided
        if spec is None:
            return None
        if self._grammars is None:
            raise ValueError("structured output needs the model's tokenizer, not loaded here")
        return self._grammars.constraint(spec, req.token_ids, req.num_prompt_tokens)
