"""The model runner: the only part that turns block ids and token counts into tensors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine import hugepages
from engine.attention import AttentionBackend, BatchLayout, SeqSlice, create_backend
from engine.compiled import CompiledDecode
from engine.cuda_graph import CudaGraphDecode
from engine.model.choose import choose_gemms
from engine.model.llama import LlamaModel
from engine.model.ops import NativeOps
from engine.parallel.group import TPGroup
from engine.scheduler import ScheduledChunk
from engine.transfer.heads import HeadSlice

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A step's tokens as the model reads them, and which rows' logits are wanted: all a
    follower rank needs to run the same step (engine/parallel)."""

    ids: list[int]
    positions: list[int]
    layout: BatchLayout
    logit_rows: list[int]

    @classmethod
    def of(cls, chunks: Sequence[ScheduledChunk]) -> StepPlan:
        ids: list[int] = []
        positions: list[int] = []
        seqs: list[SeqSlice] = []
        logit_rows: list[int] = []
        for c in chunks:
            end = c.start + c.num_tokens
            seqs.append(SeqSlice(len(ids), c.num_tokens, end, tuple(c.request.block_ids)))
            logit_rows += (len(ids) + p - c.start for p in c.prompt_rows)
            ids += c.request.token_ids[c.start : end]
            positions += range(c.start, end)
            if c.samples:
                logit_rows.append(len(ids) - 1)
        return cls(ids, positions, BatchLayout(tuple(seqs), len(ids)), logit_rows)


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        attention_backend: str,
        heads: HeadSlice | None = None,
    ) -> None:
        """GEMM kernels are picked where they measure faster (engine/model/choose.py: a
        GGUF's blocks, our bf16 panels, oneDNN on packed weights). `heads`: the model's KV
        heads this rank holds and the head groups its cache is laid out in (None: all of
        them, one group)."""
        cfg = model.cfg
        self.model = model
        self.block_size = block_size
        self.heads = heads or HeadSlice(0, cfg.num_kv_heads)
        if self.heads.count != cfg.num_kv_heads:
            raise ValueError(f"{self.heads} for a model of {cfg.num_kv_heads} KV heads")
        param = next(model.parameters())
        # Allocated once for the worker's life (and registered once with the transfer
        # layer). Zeroed: padded attention reads masked slots, and NaN * 0 is NaN. On a
        # CPU on huge pages (engine/hugepages.py: decode attention's TLB misses).
        # kv_cache: [num_blocks, num_layers, 2, block_size, kv_heads, head_dim], or in
        # head groups [groups, num_blocks, num_layers, 2, block_size, kv_heads/groups, head_dim]
        groups = self.heads.groups
        shape: tuple[int, ...] = (
            num_blocks,
            cfg.num_layers,
            2,
            block_size,
            self.heads.group_heads,
            cfg.head_dim,
        )
        if groups > 1:
            shape = (groups, *shape)
        if param.device.type == "cpu":
            self.kv_cache = hugepages.zeros(shape, param.dtype)
        else:
            self.kv_cache = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.attn: AttentionBackend = create_backend(
            attention_backend,
            self.kv_cache,
            block_size,
            cfg.num_heads,
            scale=cfg.head_dim**-0.5,
            head_groups=groups,
        )
        if _native_kernels(self.kv_cache):
            model.ops = NativeOps()
        choose_gemms(model, bf16_panels=_bf16_panels(self.kv_cache))
        self.compiled: CompiledDecode | CudaGraphDecode | None = None
        # rank 0 of a tensor-parallel worker (engine/parallel): its followers get each step
        self.tp: TPGroup | None = None

    def compile_decode(self, max_num_seqs: int, sizes: Sequence[int] | None) -> None:
        """Capture the decode step now, where it can be: CUDA graphs on a GPU
        (engine/cuda_graph.py), inductor on a CPU (engine/compiled.py); not over a cache in
        head groups, whose step is one kernel call a group."""
        kinds = (CudaGraphDecode, CompiledDecode)
        kind = next((k for k in kinds if k.supported(self.model, self.kv_cache)), None)
        if self.heads.groups > 1 or kind is None:
            log.info("decode step not captured: it runs eagerly")
            return
        self.compiled = kind(self.model, self.kv_cache, self.block_size, max_num_seqs, sizes)
        self.compiled.capture()

    @property
    def device(self) -> torch.device:
        return self.kv_cache.device

    @torch.inference_mode()
    def execute(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """Run one step's chunks; return float32 logits, chunk by chunk: the rows of its
        `prompt_rows` (where a request asked for its prompt's logprobs), then its last row
        if it samples. [n_sampling, vocab] when no prompt is scored."""
        if self.compiled is not None and self.compiled.fits(chunks):
            return self.compiled.run(chunks)
        plan = StepPlan.of(chunks)
        if self.tp is not None:
            self.tp.send(plan)  # the followers run the same step on their shards
        hidden = self._forward(plan)
        if not plan.logit_rows:
            return hidden.new_empty((0, self.model.cfg.vocab_size), dtype=torch.float32)
        return self.model.logits(hidden)

    @torch.inference_mode()
    def run_plan(self, plan: StepPlan) -> None:
        """A follower rank: the step rank 0 planned, on this rank's shard and KV heads
        (engine/parallel/launch.py)."""
        self._forward(plan)

    def _forward(self, plan: StepPlan) -> torch.Tensor:
        """The final hidden states of the plan's logit rows, in their order."""
        self.attn.prepare(plan.layout)
        dev = self.device
        every_row = plan.logit_rows == list(range(len(plan.ids)))
        return self.model(
            torch.tensor(plan.ids, dtype=torch.long, device=dev),
            torch.tensor(plan.positions, dtype=torch.long, device=dev),
            self.attn,
            None if every_row else torch.tensor(plan.logit_rows, dtype=torch.long, device=dev),
        )

    def finish_step(self, started: float) -> None:
        """Nothing to wait for: the forward pass took its real time."""


def _native_kernels(kv_cache: torch.Tensor) -> bool:
    """Our C++ kernels serve CPU float32/bfloat16 models (built on first use)."""
    if kv_cache.device.type != "cpu" or kv_cache.dtype not in (torch.float32, torch.bfloat16):
        return False
    from engine.kernels import cpu

    return cpu.load()


def _bf16_panels(kv_cache: torch.Tensor) -> bool:
    """Our bf16 panel GEMM is built for this CPU (AVX-512 BF16)."""
    if kv_cache.device.type != "cpu":
        return False
    from engine.kernels import cpu

    return cpu.bf16_panels()
