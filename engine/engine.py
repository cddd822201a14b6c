"""The engine: one process, one model, one paged KV cache, continuous batching.

    step():  schedule -> execute -> update

Everything else here is bookkeeping at the edges: admitting requests, deciding which
sampled tokens end their request, and reporting what happened (token ids: the text is the
caller's, see engine/detokenize.py). Workers use the narrow API below (held requests,
requests awaiting KV, load and KV snapshots), never the scheduler's queues.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from engine.admission import check_fits, check_params_vocab, check_prompt_ids
from engine.backends import Runner, load_backend, make_runner
from engine.block_pool import BlockPool
from engine.config import EngineConfig
from engine.detokenize import DecodeStreamDecoder, IncrementalText
from engine.guided import Grammars
from engine.kv_events import KVEventSink
from engine.mock import MOCK_NUM_BLOCKS
from engine.offline import Completion, run_to_completion
from engine.output import (
    AdmissionCounts,
    EngineLoad,
    KVSnapshot,
    RequestLengths,
    RequestOutput,
    StepTotals,
    p90,
)
from engine.prompt_logprobs import score_prompts
from engine.request import FinishReason, Request, Status
from engine.sample_rows import SampleRows
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.tokenizer import Tokenizer, load_tokenizer

__all__ = ["Completion", "Engine", "RequestOutput", "Runner"]


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
        model_cfg, model, self.dtype, device, tp = load_backend(config)
        self.tp = tp  # rank 0's group of a tensor-parallel worker (engine/parallel)
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
        self.totals = StepTotals()  # what its steps computed, and in how long
        self.lengths = RequestLengths()  # of the requests it finished lately
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
            load_tokenizer(config.model, model_cfg.eos_token_ids, deferred=True)
            if load_tokenizer_files
            else None
        )
        self.eos_token_ids = (
            self.tokenizer.eos_token_ids if self.tokenizer else model_cfg.eos_token_ids
        )
        self.runner = make_runner(
            config,
            model,
            self.num_blocks,
            self.block_size,
            model_cfg.vocab_size,
            self.eos_token_ids,
            device,
            self.tokenizer.vocab_size if self.tokenizer else None,
            tp,
        )
        self.requests: dict[str, Request] = {}
        grammars = (
            Grammars(self.tokenizer.backend, model_cfg.vocab_size, self.eos_token_ids)
            if self.tokenizer
            else None
        )
        self._rows = SampleRows(config.seed, self.eos_token_ids, grammars)

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
        cache_salt: str = "",
    ) -> Request:
        """Queue a prompt (text, or token ids). Raises ValueError for what cannot run.
        `cache_salt`: prefix-cache hits only on blocks of requests with the same salt."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        ids = self._tokenize(prompt)
        vocab = self.model_config.vocab_size
        check_prompt_ids(ids, vocab)
        check_params_vocab(params, vocab)
        check_fits(
            len(ids), params.max_tokens, self.max_model_len, self.num_blocks, self.block_size
        )
        req = Request(
            request_id,
            ids,
            params,
            time.monotonic(),
            remote_prefill=remote_prefill,
            cache_salt=cache_salt,
        )
        self._rows.add(req)  # first: it may refuse the request's grammar
        self.requests[request_id] = req
        self.scheduler.add(req)
        return req

    def _tokenize(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> bool:
        """Stop a request wherever it is and free its blocks. False if unknown/finished.
        `reason` is STOP when the caller found a stop string in the text."""
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return False
        self.scheduler.finish(req, reason)
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
        if any(c.prompt_rows for c in sched.chunks):
            logits = score_prompts(sched.chunks, logits)
        sampled = self._rows.sample([c.request for c in sched.chunks if c.samples], logits)
        got = self.scheduler.update(sched, sampled)
        outputs = [self._conclude(r) for r in got]
        self.runner.finish_step(started)  # the mock waits out its modelled time here
        self.totals.add([c.num_tokens for c in sched.chunks], time.perf_counter() - started)
        return outputs

    def _conclude(self, req: Request) -> RequestOutput:
        """`req` just got a token: end it if that token stops it, and report it."""
        reason = self._stop_reason(req)
        if reason is not None:
            self.scheduler.finish(req, reason)
        start, req.start = req.start, None  # reported once
        out = RequestOutput(
            request_id=req.request_id,
            new_token_ids=[req.token_ids[-1]],
            finished=req.finished or req.held,
            finish_reason=req.finish_reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens,
            num_output_tokens=req.num_output_tokens,
            new_logprobs=req.logprobs[-1:] if req.params.logprobs else [],
            new_top_logprobs=req.top_logprobs[-1:] if req.params.top_logprobs else [],
            held=req.held,
            start=start,
        )
        if req.params.prompt_logprobs is not None and req.num_output_tokens == 1:
            out.prompt_logprobs = req.prompt_logprobs
            out.prompt_top_logprobs = req.prompt_top_logprobs
        if out.finished:  # ended, or held for a peer: its lengths are known
            at_limit = req.finish_reason is FinishReason.LENGTH
            self.lengths.add(req.num_prompt_tokens, req.num_output_tokens, at_limit)
        if req.finished:
            self._forget(req.request_id)
        return out

    def _stop_reason(self, req: Request) -> FinishReason | None:
        """Stop strings are not checked here: they need the text (see detokenize.py)."""
        p, token = req.params, req.token_ids[-1]
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            return FinishReason.STOP
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return FinishReason.STOP if self._rows.grammar_done(req) else None

    def _forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
        self._rows.drop(request_id)

    # ---- disaggregation hooks (the transfer layer drives these) -------------------
    def held_request(self, request_id: str) -> Request | None:
        """Prefill role: a request whose prompt is done and whose blocks wait for a peer."""
        return self.scheduler.held.get(request_id)

    def awaiting_kv(self, request_id: str) -> Request | None:
        """Decode role: a request admitted with blocks allocated, waiting for its KV."""
        req = self.scheduler.remote.get(request_id)
        return req if req is not None and req.status is Status.WAITING_FOR_REMOTE_KV else None

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
        out = self._conclude(req)  # the same stop rules as a token sampled here
        if not out.finished:
            return None
        out.new_token_ids, out.new_logprobs, out.new_top_logprobs = [], [], []
        return out

    # ---- what workers read ---------------------------------------------------------
    def has_running(self) -> bool:
        """Requests in the batch: the next step has work (a cheap check, every loop)."""
        return bool(self.scheduler.running)

    def num_waiting(self) -> int:
        """Requests not admitted yet (a worker bounds this queue)."""
        return len(self.scheduler.waiting)

    def load(self) -> EngineLoad:
        sched, pool = self.scheduler, self.pool
        return EngineLoad(
            running=sched.num_active(),
            waiting=len(sched.waiting),
            queued_prefill_tokens=sched.queued_prefill_tokens(),
            num_blocks=self.num_blocks,
            free_blocks=pool.num_free_blocks,
            cached_blocks=pool.num_cached_blocks,
            held_blocks=sum(len(r.block_ids) for r in sched.held.values()),
            idle=pool.is_idle() and not sched.has_unfinished() and not sched.held,
            running_output_p90=p90(r.num_output_tokens for r in sched.running),
        )

    def admission_counts(self) -> AdmissionCounts:
        sched = self.scheduler
        return AdmissionCounts(
            sched.num_preemptions, sched.prefix_queried_tokens, sched.prefix_hit_tokens
        )

    def kv_snapshot(self) -> KVSnapshot:
        """Consistent with the KV event stream: events after `seq` apply on top of it."""
        return KVSnapshot(self.pool.event_seq, self.pool.cached_hashes())

    def check_integrity(self) -> None:
        """Audit the block pool's books (O(blocks)); raises AssertionError."""
        self.pool.check_integrity()

    # ---- offline helpers -----------------------------------------------------------
    def text_stream(self, stop: Sequence[str] = ()) -> IncrementalText:
        """A fresh incremental detokenizer for one request's tokens."""
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer")
        return IncrementalText(DecodeStreamDecoder(self.tokenizer.backend), tuple(stop))

    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Run prompts to completion together (continuous batching) and return each result."""
        return run_to_completion(self, prompts, params)
