"""The engine: one process, one model, one paged KV cache, continuous batching.

    step():  schedule -> execute -> update

Everything else here is bookkeeping at the edges: admitting requests, turning sampled
tokens into text, and reporting what happened.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.block_pool import BlockPool
from engine.config import EngineConfig
from engine.kv_events import KVEventSink
from engine.mock import MOCK_NUM_BLOCKS, MockRunner
from engine.model.config import ModelConfig
from engine.model.llama import LlamaModel
from engine.model.loader import (
    build_model,
    read_checkpoint,
    read_model_config,
    resolve_device,
    resolve_dtype,
)
from engine.output import RequestOutput, TextStream
from engine.request import Request
from engine.runner import ModelRunner
from engine.sampler import SampleRow, sample
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from engine.tokenizer import Tokenizer, load_tokenizer

__all__ = ["Completion", "Engine", "RequestOutput", "Runner"]


class Runner(Protocol):
    """A backend's forward pass, picked by EngineConfig.backend: model (engine.runner) or
    mock (engine.mock)."""

    kv_cache: torch.Tensor  # block-major [num_blocks, ...], registered with the transfer layer

    def execute(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor: ...

    def finish_step(self, started: float) -> None:
        """The step that began at perf_counter() `started` is done."""


@dataclass(slots=True)
class Completion:
    """The whole result of one prompt, for offline use (`Engine.generate`)."""

    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[float]
    num_cached_tokens: int


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        on_kv_event: KVEventSink | None = None,
        load_tokenizer_files: bool = True,
    ) -> None:
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        model_cfg, model, self.dtype, device = _load(config)
        self.model_config = model_cfg
        self.max_model_len = min(
            config.max_model_len or model_cfg.max_position_embeddings,
            model_cfg.max_position_embeddings,
        )
        cache = config.cache
        self.block_size = cache.block_size
        self.num_blocks = cache.num_blocks or (
            MOCK_NUM_BLOCKS if model is None else self._blocks_for(cache.kv_cache_gb)
        )
        self.pool = BlockPool(self.num_blocks, on_event=on_kv_event)
        sc = config.scheduler
        self.scheduler = Scheduler(
            self.pool,
            self.block_size,
            sc.max_num_seqs,
            sc.max_num_batched_tokens,
            enable_chunked_prefill=sc.enable_chunked_prefill,
            enable_prefix_caching=cache.enable_prefix_caching,
            role=config.role,
        )
        self.tokenizer: Tokenizer | None = (
            load_tokenizer(config.model, model_cfg.eos_token_ids) if load_tokenizer_files else None
        )
        self.eos_token_ids = (
            self.tokenizer.eos_token_ids if self.tokenizer else model_cfg.eos_token_ids
        )
        self.runner = self._make_runner(model, device)
        self.requests: dict[str, Request] = {}
        self._streams: dict[str, TextStream] = {}
        self._rows: dict[str, SampleRow] = {}
        self._seed_gen = torch.Generator().manual_seed(config.seed)

    def _make_runner(self, model: LlamaModel | None, device: torch.device) -> Runner:
        cfg = self.config
        if model is not None:
            return ModelRunner(model, self.num_blocks, self.block_size, cfg.attention_backend)
        return MockRunner(
            cfg.mock,
            self.num_blocks,
            self.block_size,
            self.model_config.vocab_size,
            self.eos_token_ids,
            device,
            self.tokenizer.vocab_size if self.tokenizer else None,
        )

    def _blocks_for(self, gb: float) -> int:
        per_block = self.block_size * self.model_config.kv_bytes_per_token * self.dtype.itemsize
        return max(1, int(gb * (1 << 30)) // per_block)

    # ---- requests ------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        remote_prefill: bool = False,
    ) -> Request:
        """Queue a prompt (text, or token ids). Raises ValueError for what cannot run."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        ids = self._tokenize(prompt)
        self._check_fits(len(ids), params.max_tokens)
        req = Request(request_id, ids, params, time.monotonic(), remote_prefill=remote_prefill)
        self.requests[request_id] = req
        self._rows[request_id] = SampleRow(params, self._generator(params))
        if self.tokenizer is not None:
            self._streams[request_id] = TextStream(self.tokenizer, params.stop)
        self.scheduler.add(req)
        return req

    def _tokenize(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"token ids must be in [0, {vocab})")
        return ids

    def _check_fits(self, prompt_len: int, max_tokens: int) -> None:
        if prompt_len == 0:
            raise ValueError("prompt must contain at least one token")
        total = prompt_len + max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {total} exceeds "
                f"the model's context length of {self.max_model_len} tokens"
            )
        if total > self.num_blocks * self.block_size:
            raise ValueError(
                f"prompt + max_tokens = {total} tokens exceeds the KV cache "
                f"({self.num_blocks} blocks of {self.block_size})"
            )

    def _generator(self, params: SamplingParams) -> torch.Generator:
        seed = params.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_gen).item())
        return torch.Generator().manual_seed(seed)

    def abort(self, request_id: str) -> bool:
        """Stop a request wherever it is and free its blocks. False if unknown/finished."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return False
        self.scheduler.finish(req, "abort")
        self._forget(request_id)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the loop ------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        sched = self.scheduler.schedule()
        if not sched.chunks:
            return []
        logits = self.runner.execute(sched.chunks)
        sampled = self._sample(sched, logits)
        touched = self.scheduler.update(sched, sampled, self._stop_reason)
        outputs = [self._output(r) for r in touched]
        self.runner.finish_step(started)  # the mock waits out its modelled time here
        return outputs

    def _sample(
        self, sched: SchedulerOutput, logits: torch.Tensor
    ) -> dict[str, tuple[int, float | None]]:
        reqs = [c.request for c in sched.chunks if c.samples]
        rows = [self._row(r) for r in reqs]
        tokens, logprobs = sample(logits, rows)
        return {r.request_id: (t, lp) for r, t, lp in zip(reqs, tokens, logprobs, strict=True)}

    def _row(self, req: Request) -> SampleRow:
        row = self._rows[req.request_id]
        p = req.params
        row.banned = (
            (self.eos_token_ids + p.stop_token_ids) if req.num_output_tokens < p.min_tokens else ()
        )
        return row

    def _stop_reason(self, req: Request) -> str | None:
        p, token = req.params, req.token_ids[-1]
        stream = self._streams.get(req.request_id)
        if stream is not None and stream.update(req.output_token_ids):
            return "stop"
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            return "stop"
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _output(self, req: Request) -> RequestOutput:
        done = req.finish_reason is not None
        stream = self._streams.get(req.request_id)
        out = RequestOutput(
            request_id=req.request_id,
            new_token_ids=[req.token_ids[-1]],
            new_text=stream.take(final=done) if stream else "",
            finished=done,
            finish_reason=req.finish_reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens,
            num_output_tokens=req.num_output_tokens,
            new_logprobs=req.logprobs[-1:] if req.params.logprobs else [],
        )
        if done and req.finish_reason != "remote_decode":
            self._forget(req.request_id)
        return out

    def _forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
        self._streams.pop(request_id, None)
        self._rows.pop(request_id, None)

    # ---- disaggregation hooks (the transfer layer drives these) -------------------
    def release_held(self, request_id: str) -> bool:
        """Prefill role: the peer has read (or abandoned) the KV; free the blocks."""
        self._forget(request_id)
        return self.scheduler.release_held(request_id)

    def remote_kv_ready(
        self, request_id: str, first_token: int | None, kv_valid: bool = True
    ) -> RequestOutput | None:
        """Decode role: the prompt's KV is in this request's blocks (or, with `kv_valid`
        False, could not be trusted and is recomputed here). `first_token` is the prefill
        worker's sample, already sent to the client, so it is not emitted again.
        Returns the request's final output when that first token already ends it."""
        req = self.scheduler.remote_kv_ready(request_id, first_token, kv_valid)
        if first_token is None:
            return None
        reason = self._stop_reason(req)
        if reason is None:
            return None
        self.scheduler.finish(req, reason)
        out = self._output(req)
        out.new_token_ids, out.new_logprobs = [], []
        return out

    # ---- offline helper ------------------------------------------------------------
    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Run prompts to completion together (continuous batching) and return each result."""
        tag = time.monotonic_ns()
        reqs = [self.add_request(f"generate-{tag}-{i}", p, params) for i, p in enumerate(prompts)]
        texts: dict[str, list[str]] = {r.request_id: [] for r in reqs}
        while self.has_unfinished():
            for out in self.step():
                if out.request_id in texts:
                    texts[out.request_id].append(out.new_text)
        return [
            Completion(
                r.output_token_ids,
                "".join(texts[r.request_id]),
                r.finish_reason,
                r.logprobs,
                r.num_cached_tokens,
            )
            for r in reqs
        ]


def _load(
    config: EngineConfig,
) -> tuple[ModelConfig, LlamaModel | None, torch.dtype, torch.device]:
    """The model (None for the mock backend, which reads the config alone), its dtype and
    device. The mock computes nothing in its dtype, so it measures none: float32, and on
    the CPU unless a device is named (hundreds of mock workers need no accelerator)."""
    if config.backend == "mock":
        device = torch.device("cpu" if config.device == "auto" else config.device)
        return read_model_config(config.model), None, torch.float32, device
    device = resolve_device(config.device)
    model_cfg, tensors = read_checkpoint(config.model)
    dtype = resolve_dtype(config.dtype, model_cfg, device)
    return model_cfg, build_model(model_cfg, tensors, dtype, device, config.model), dtype, device
