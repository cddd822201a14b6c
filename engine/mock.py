"""The mock backend: the real block pool, scheduler, sampler and KV events around a modelled
forward pass, and no weights. `tandem serve --engine mock` and `tandem worker --engine mock`
serve the same worker API as the real engine, so routing, autoscaling and failure
behaviour can be exercised with many workers on one machine.

Only the forward pass is replaced:

  time    each step lasts what `step_seconds` models: the engine sleeps out whatever its
          real bookkeeping (scheduling, sampling, detokenizing) left of it, so a worker
          waiting on its pretend accelerator costs no CPU. Bookkeeping that takes longer
          makes the step longer: an overloaded host shows as slow workers, never hides;
  output  a hash chained over the sequence, kept in the KV cache: position q's value is
          mixed from position q-1's (read from the cache) and token q, and the next token
          comes from the last one. Identical prompts give identical tokens, and a decode
          worker whose KV did not arrive, or arrived wrong, gives different ones, as a
          real model would. EOS is never picked: requests run to max_tokens or a stop;
  memory  a real KV cache, block-major like the model's, of 2 floats a token, so NIXL
          registration and reads between mock workers are real and cheap.

The timing model (engine.config.MockTiming), per step, in milliseconds:

    step = ( step_ms                                  fixed: launches, synchronisation
           + prefill_ms_per_token * P                 P: tokens computed for prompts
           + decode_ms + decode_ms_per_seq * D        D: sequences decoding, if D > 0
           + decode_ms_per_1k_context * C / 1000      C: those sequences' context, tokens
           ) / speed

The defaults are a mid-size model (8B parameters, bf16, grouped-query attention) on one
current accelerator:

    step_ms                    2.0   per-step overhead of a real engine
    prefill_ms_per_token       0.1   10k tokens/s: 16 GFLOP a token at ~160 TFLOP/s
    decode_ms                  8.0   reading 16 GB of weights once, at ~2 TB/s
    decode_ms_per_seq          0.05  per-sequence compute and sampling
    decode_ms_per_1k_context   0.04  128 KiB of KV a token: 128 MiB per 1k at ~3 TB/s

so one sequence decodes at about 10 ms a token, 64 sequences at 2k context take 18.4 ms a
step, and a 1000-token prompt 102 ms. Prefix-cache hits cost nothing: the scheduler never
schedules them. P counts every chunk that is not a decode (one token past the prompt), so
a preempted request's recompute costs prefill time too. Attention's quadratic share of
prefill is left out.

For failure tests, `die_at_step=N` makes the N-th forward pass raise (the engine loop then
dies inside a live worker, as after a real bug or a lost device).

The KV pool is MOCK_NUM_BLOCKS blocks unless CacheConfig.num_blocks says otherwise: the
model file says nothing about the memory of the accelerator being modelled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from engine.config import MockTiming
from engine.scheduler import ScheduledChunk
from engine.transfer.heads import HeadSlice

MOCK_NUM_BLOCKS = 4096  # 64k tokens of 16: a few concurrent long prompts per worker

# The chain: value(q) = (value(q-1) * _MUL + token(q) * _TOKEN_MUL + q) % _PRIME, a prime
# below 2**24 so every value is exact in the float32 cache.
_PRIME = 16_777_213
_MUL = 1_000_003
_TOKEN_MUL = 65_599
_SEED = 12_345  # value(-1)
_PEAK = 20.0  # the picked token's logit (others 0): probability ~1 at temperature 1


def step_seconds(timing: MockTiming, chunks: Sequence[ScheduledChunk]) -> float:
    """The modelled duration of a forward pass over `chunks` (see the module docstring)."""
    prefill = decoding = context = 0
    for c in chunks:
        if c.num_tokens == 1 and c.start >= c.request.num_prompt_tokens:
            decoding += 1
            context += c.start + 1
        else:
            prefill += c.num_tokens
    ms = timing.step_ms + timing.prefill_ms_per_token * prefill
    if decoding:
        ms += timing.decode_ms + timing.decode_ms_per_seq * decoding
        ms += timing.decode_ms_per_1k_context * context / 1000
    return ms / timing.speed / 1000


class MockRunner:
    """ModelRunner's interface; `execute` returns at once and the engine calls
    `finish_step` when the rest of its step is done."""

    def __init__(
        self,
        timing: MockTiming,
        num_blocks: int,
        block_size: int,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        device: torch.device,
        num_text_tokens: int | None = None,
    ) -> None:
        self.timing = timing
        self.block_size = block_size
        self.vocab_size = vocab_size
        # Picked tokens stay below this: a model's vocab may be padded past its tokenizer's.
        self.num_text_tokens = min(vocab_size, num_text_tokens or vocab_size)
        self.eos_token_ids = frozenset(eos_token_ids)
        if sum(t < self.num_text_tokens for t in self.eos_token_ids) >= self.num_text_tokens:
            raise ValueError("the mock needs a token that is not EOS to emit")
        # kv_cache: [num_blocks, 1 layer, 2, block_size, 1 head, 1 dim], float32:
        # K holds each position's token id, V its chain value.
        self.kv_cache = torch.zeros(num_blocks, 1, 2, block_size, 1, 1, device=device)
        self.heads = HeadSlice(0, 1)
        self._tokens = self.kv_cache[:, 0, 0, :, 0, 0]  # views: [num_blocks, block_size]
        self._values = self.kv_cache[:, 0, 1, :, 0, 0]
        # On the CPU the same views through numpy: a step's few reads and writes cost
        # microseconds there, and tens of them through torch (a tensor per index list).
        self._np = (self._tokens.numpy(), self._values.numpy()) if self.kv_cache.is_cpu else None
        self.last_step_s = 0.0  # the modelled duration of the last execute()
        self.steps = 0

    @property
    def device(self) -> torch.device:
        return self.kv_cache.device

    def execute(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """Write each chunk's K/V; return float32 logits whose argmax is the chain's pick,
        in the rows the real runner returns (engine/runner.py)."""
        self.steps += 1
        if self.steps == self.timing.die_at_step:
            raise RuntimeError(f"mock fault: the forward pass dies at step {self.steps}")
        self.last_step_s = step_seconds(self.timing, chunks)
        blocks: list[int] = []
        slots: list[int] = []
        tokens: list[int] = []
        values: list[int] = []
        picks: list[int] = []
        for c, value in zip(chunks, self._values_before(chunks), strict=True):
            positions = range(c.start, c.start + c.num_tokens)
            ids = c.request.token_ids[c.start : c.start + c.num_tokens]
            first = len(values)
            for pos, token in zip(positions, ids, strict=True):
                value = (value * _MUL + token * _TOKEN_MUL + pos) % _PRIME
                values.append(value)
            picks += (self._pick(values[first + p - c.start]) for p in c.prompt_rows)
            blocks += [c.request.block_ids[p // self.block_size] for p in positions]
            slots += [p % self.block_size for p in positions]
            tokens += ids
            if c.samples:
                picks.append(self._pick(value))
        if self._np is not None:
            self._np[0][blocks, slots] = tokens
            self._np[1][blocks, slots] = values
        else:
            where = (self._tensor(blocks), self._tensor(slots))
            self._tokens.index_put_(where, self._tensor(tokens, torch.float32))
            self._values.index_put_(where, self._tensor(values, torch.float32))
        logits = torch.zeros(len(picks), self.vocab_size)  # on the CPU, as the sampler's
        rows = logits.numpy()
        for i, token in enumerate(picks):
            rows[i, token] = _PEAK
        return logits

    def _values_before(self, chunks: Sequence[ScheduledChunk]) -> list[int]:
        """Each chunk's chain value at the position before its first, from the cache (a
        prefix hit, an earlier step, or a peer's blocks read over NIXL)."""
        before = [(c.request.block_ids, c.start - 1) for c in chunks if c.start > 0]
        blocks = [ids[p // self.block_size] for ids, p in before]
        slots = [p % self.block_size for _, p in before]
        if self._np is not None:
            got = self._np[1][blocks, slots].tolist()
        else:
            got = self._values[self._tensor(blocks), self._tensor(slots)].tolist()
        read = iter(got)
        return [int(next(read)) if c.start > 0 else _SEED for c in chunks]

    def _tensor(self, xs: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(xs, dtype=dtype, device=self.device)

    def _pick(self, value: int) -> int:
        token = value % self.num_text_tokens
        while token in self.eos_token_ids:
            token = (token + 1) % self.num_text_tokens
        return token

    def finish_step(self, started: float) -> None:
        """Sleep out the modelled step that began at `started` (time.perf_counter)."""
        rest = started + self.last_step_s - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
