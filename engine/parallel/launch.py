"""A tensor-parallel worker's processes: rank 0 (the engine's own process) starts ranks 1
.. size-1 as child processes, each loading its shard of the same checkpoint, then sizes
their KV caches to its own and sends them every step (`_follow`), with what rank 0 asks
of their KV memory between steps (engine/parallel/kv.py).

Children are spawned, not forked (torch's threads and the engine's do not survive a fork),
and daemonic: they end with rank 0's process, and also when its pipe closes."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import socket
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch

from engine.config import EngineConfig
from engine.model.config import ModelConfig
from engine.model.llama import LlamaModel
from engine.model.loader import build_model, read_checkpoint, resolve_device
from engine.parallel.follower_kv import FollowerKV
from engine.parallel.group import TPGroup
from engine.parallel.kv_messages import FollowerMessage
from engine.parallel.shard import shard_config, shard_tensors
from engine.transfer.heads import HeadSlice

if TYPE_CHECKING:
    from engine.runner import ModelRunner

READ_POLL_S = 0.0005  # as a worker's engine loop polls its reads


def start_followers(config: EngineConfig, dtype: torch.dtype, device: torch.device) -> TPGroup:
    """Rank 0: start the followers and join them; returns rank 0's group."""
    size = config.tensor_parallel_size
    port = _free_port()
    # the dtype rank 0 resolved: "auto" measures, and ranks must not measure differently
    follower_config = dataclasses.replace(config, dtype=str(dtype).removeprefix("torch."))
    ctx = mp.get_context("spawn")
    readers = ctx.Event()
    pipes, processes = [], []
    for rank in range(1, size):
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=_follower_main,
            args=(follower_config, rank, port, theirs, readers),
            name=f"tandem-tp-rank-{rank}",
            daemon=True,
        )
        process.start()
        theirs.close()
        pipes.append(ours)
        processes.append(process)
    group = TPGroup.join(0, size, port, device)
    group.pipes, group.readers, group.processes = pipes, readers, processes
    return group


def load_shard(
    config: EngineConfig,
    local: ModelConfig,
    tensors: dict[str, torch.Tensor],
    group: TPGroup,
    dtype: torch.dtype,
    device: torch.device,
) -> LlamaModel:
    """This rank's model (`local`: shard_config's): its slice of every sharded weight,
    summing over the group."""
    shard = shard_tensors(tensors, local, group.rank, group.size)
    model = build_model(local, shard, dtype, device, config.model)
    model.shard_over(group.all_reduce, group.size)
    return model


def _follower_main(
    config: EngineConfig, rank: int, port: int, pipe: Connection, readers: Any
) -> None:
    from engine.runner import ModelRunner  # the child's own import, after the spawn

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = rank_device(resolve_device(config.device), rank)
    group = TPGroup.join(rank, config.tensor_parallel_size, port, device)
    cfg, tensors, _ = read_checkpoint(config.model)
    local = shard_config(cfg, group.size, config.model, rank, config.enable_expert_parallel)
    model = load_shard(config, local, tensors, group, getattr(torch, config.dtype), device)
    del tensors
    num_blocks, block_size = pipe.recv()  # rank 0 sizes every rank's cache alike
    heads = HeadSlice(rank * local.num_kv_heads, local.num_kv_heads, config.cache.kv_head_groups)
    runner = ModelRunner(model, num_blocks, block_size, config.attention_backend, heads=heads)
    _follow(runner, pipe, FollowerKV(runner.kv_cache, heads, pipe, readers))


def _follow(runner: ModelRunner, pipe: Connection, kv: FollowerKV) -> None:
    """Run each step rank 0 sends and do what it asks of this rank's KV, until it sends
    None or is gone. Reads in flight are polled between messages, every READ_POLL_S."""
    while True:
        if kv.reading and not pipe.poll(READ_POLL_S):
            kv.poll()
            continue
        try:
            message = pipe.recv()
        except EOFError:  # rank 0 is gone
            return
        if message is None:
            return
        if isinstance(message, FollowerMessage):
            kv.handle(message)
        else:
            runner.run_plan(message)
        kv.poll()


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where a rank runs: each its own GPU (rank 0 on the configured one, the others on
    the next ones: a pod's GPUs), all on the host's CPU otherwise."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
