"""The engine's backends, picked by EngineConfig.backend: `model` (a checkpoint run by
engine.runner) or `mock` (engine.mock: modelled timings, no weights)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch

from engine.config import EngineConfig
from engine.mock import MockRunner
from engine.model.config import ModelConfig
from engine.model.llama import LlamaModel
from engine.model.loader import (
    build_model,
    read_checkpoint,
    read_model_config,
    resolve_device,
    resolve_dtype,
)
from engine.parallel.group import TPGroup
from engine.parallel.launch import load_shard, start_followers
from engine.parallel.shard import shard_config
from engine.runner import ModelRunner
from engine.scheduler import ScheduledChunk
from engine.transfer.heads import HeadSlice

log = logging.getLogger(__name__)
GIB = float(1 << 30)


class Runner(Protocol):
    """A backend's forward pass, picked by EngineConfig.backend: model (engine.runner) or
    mock (engine.mock)."""

    kv_cache: torch.Tensor  # block-major [num_blocks, ...], registered with the transfer layer
    heads: HeadSlice  # the KV heads it holds, in its head groups ([groups, num_blocks, ...])

    def execute(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor: ...

    def finish_step(self, started: float) -> None:
        """The step that began at perf_counter() `started` is done."""


def make_runner(
    config: EngineConfig,
    model: LlamaModel | None,
    num_blocks: int,
    block_size: int,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    device: torch.device,
    tokenizer_vocab_size: int | None,
    tp: TPGroup | None = None,
) -> Runner:
    if model is not None:
        # a prefill worker samples each request's first token only: no step to capture
        eager = config.eager_on(device.type) or config.role == "prefill"
        runner = ModelRunner(
            model,
            num_blocks,
            block_size,
            config.attention_backend,
            heads=HeadSlice(0, model.cfg.num_kv_heads, config.cache.kv_head_groups),
        )
        if tp is not None:
            tp.send((num_blocks, block_size))  # the followers' caches, sized as rank 0's
            runner.tp = tp
        if not eager:
            runner.compile_decode(config.scheduler.max_num_seqs, config.compile_sizes)
        _log_memory(model, runner.kv_cache, num_blocks)
        return runner
    return MockRunner(
        config.mock, num_blocks, block_size, vocab_size, eos_token_ids, device, tokenizer_vocab_size
    )


class Backend(NamedTuple):
    model_config: ModelConfig  # of the model this process runs (its shard under TP)
    model: LlamaModel | None  # None for the mock backend
    dtype: torch.dtype
    device: torch.device
    tp: TPGroup | None  # rank 0's group of a tensor-parallel worker


def load_backend(config: EngineConfig) -> Backend:
    """The model (None for the mock backend, which reads the config alone), its dtype and
    device. The mock computes nothing in its dtype, so it measures none: float32, and on
    the CPU unless a device is named (hundreds of mock workers need no accelerator)."""
    if config.backend == "mock":
        device = torch.device("cpu" if config.device == "auto" else config.device)
        return Backend(read_model_config(config.model), None, torch.float32, device, None)
    device = resolve_device(config.device)
    model_cfg, tensors, blocks = read_checkpoint(config.model)
    dtype = resolve_dtype(config.dtype, model_cfg, device)
    if config.tensor_parallel_size == 1:
        model = build_model(model_cfg, tensors, dtype, device, config.model, blocks)
        return Backend(model_cfg, model, dtype, device, None)
    # refused here, before any process starts, if the size does not divide the model
    local_cfg = shard_config(
        model_cfg, config.tensor_parallel_size, config.model, 0, config.enable_expert_parallel
    )
    # a GGUF's quantized blocks are not sharded: the shards run on dequantized weights
    group = start_followers(config, dtype, device)
    model = load_shard(config, local_cfg, tensors, group, dtype, device)
    return Backend(local_cfg, model, dtype, device, group)


def _log_memory(model: LlamaModel, kv_cache: torch.Tensor, num_blocks: int) -> None:
    """What a worker holds once loaded: a pod's memory request is sized from this line."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_cache.numel() * kv_cache.element_size()
    if kv_cache.device.type == "cuda":
        held = f"{torch.cuda.memory_allocated(kv_cache.device) / GIB:.2f} GiB allocated on the GPU"
    else:  # Linux reports the peak resident size in KiB
        held = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20):.2f} GiB peak RSS"
    log.info(
        "memory: weights %.2f GiB (%s), KV cache %.2f GiB (%d blocks); process %s",
        weights / GIB,
        str(next(model.parameters()).dtype).removeprefix("torch."),
        kv / GIB,
        num_blocks,
        held,
    )
