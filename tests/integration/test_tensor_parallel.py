"""Tensor parallelism inside one engine (engine/parallel): the model sharded over two
processes on gloo, rank 0 scheduling and the follower running each step on its half of
the heads and MLP (experts included), summed after each layer's attention and MLP. Greedy
tokens must equal transformers' (so the unsharded engine's) for a dense and a MoE model,
across a batch of mixed lengths with chunked prefill."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import grpc
import pytest
import redis

from engine import CacheConfig, Engine, EngineConfig, SamplingParams, SchedulerConfig
from engine.model.config import ModelLoadError
from engine.tokenizer import load_tokenizer
from services.cluster.launch import Proc, start_worker
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb
from tests.helpers.hf_reference import build_tiny_checkpoint, hf_greedy, load_hf

NEW_TOKENS = 12


def _engine(path: Path, tp: int, expert_parallel: bool = False, head_groups: int = 1) -> Engine:
    cfg = EngineConfig(
        model=str(path),
        dtype="float32",
        num_threads=1,
        tensor_parallel_size=tp,
        enable_expert_parallel=expert_parallel,
        cache=CacheConfig(block_size=16, num_blocks=128, kv_head_groups=head_groups),
        scheduler=SchedulerConfig(max_num_batched_tokens=64),  # prompts prefill in chunks
    )
    return Engine(cfg, load_tokenizer_files=False)


# qwen3: per-head q/k norms; minimax_m2: q/k norms across all heads (a sum over ranks),
# sigmoid-routed experts, each expert's MLP split between the ranks or (expert parallel)
# four whole experts of eight a rank; qwen3_moe: a dense layer between its sparse ones
@pytest.mark.parametrize(
    ("kind", "expert_parallel"),
    [("qwen3", False), ("minimax_m2", False), ("minimax_m2", True), ("qwen3_moe", True)],
)
def test_two_ranks_give_transformers_greedy_tokens(
    tiny_checkpoints: dict[str, Path], kind: str, expert_parallel: bool
) -> None:
    path = tiny_checkpoints[kind]
    rng = random.Random(31)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (5, 40, 90)]
    engine = _engine(path, tp=2, expert_parallel=expert_parallel)
    assert engine.runner.kv_cache.shape[-2] == 1  # one of the two kv heads on rank 0
    if expert_parallel:
        moe = engine.runner.model.layers[0].moe
        assert moe is not None and moe.gate_up.shape[0] == 4  # experts 0-3 of 8
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True)
    got = engine.generate(prompts, params)
    hf = load_hf(path)
    for prompt, out in zip(prompts, got, strict=True):
        want, want_lps = hf_greedy(hf, prompt, NEW_TOKENS)
        assert list(out.token_ids) == want
        assert max(abs(a - b) for a, b in zip(out.logprobs, want_lps, strict=True)) < 1e-4
    engine.pool.check_integrity()
    assert engine.pool.is_idle() and not engine.requests


@pytest.mark.parametrize("kind", ["qwen3", "minimax_m2"])
def test_a_cache_in_head_groups_gives_transformers_greedy_tokens(
    tiny_checkpoints: dict[str, Path], kind: str
) -> None:
    """One rank holding its two KV heads in two head groups (as a decode worker reading
    from a prefill pool of two ranks does): each group a cache of its own, attended
    apart (engine/attention/grouped.py)."""
    path = tiny_checkpoints[kind]
    rng = random.Random(33)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (7, 50, 90)]
    engine = _engine(path, tp=1, head_groups=2)
    assert engine.runner.kv_cache.shape[0] == 2 and engine.runner.kv_cache.shape[-2] == 1
    got = engine.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    hf = load_hf(path)
    for prompt, out in zip(prompts, got, strict=True):
        assert list(out.token_ids) == hf_greedy(hf, prompt, NEW_TOKENS)[0]
    engine.pool.check_integrity()


def test_a_size_that_does_not_divide_the_heads_is_refused(
    tiny_checkpoints: dict[str, Path],
) -> None:
    with pytest.raises(ModelLoadError, match="tensor parallel size 3 must divide num_heads 4"):
        _engine(tiny_checkpoints["llama"], tp=3)


def test_a_worker_process_serves_with_two_ranks(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    redis_url: str,
    smollm_path: Path,
) -> None:
    """`tandem worker --tensor-parallel-size 2`: the worker's engine thread spawns its
    follower, and a request over gRPC gets transformers' tokens."""
    path = build_tiny_checkpoint("minimax_m2", tmp_path / "m2", vocab_size=49152)
    load_tokenizer(smollm_path).hf.save_pretrained(str(path))  # a worker loads one
    proc, address = start_worker(
        tmp_path, "tp-worker", "both", redis_url, path, "--tensor-parallel-size=2"
    )
    try:
        prompt = [random.Random(32).randrange(49152) for _ in range(30)]
        params = params_to_pb(SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
        req = worker_pb2.DecodeRequest(request_id="tp", prompt_token_ids=prompt, params=params)
        with grpc.insecure_channel(address) as channel:
            chunks = list(worker_pb2_grpc.WorkerStub(channel).Decode(req, timeout=120))
        tokens = [t for c in chunks for t in c.token_ids]
        assert tokens == hf_greedy(load_hf(path), prompt, NEW_TOKENS)[0]
        assert len(_spawned_children(proc.proc.pid)) == 1  # the follower rank, beside it
    finally:
        proc.stop(signal.SIGTERM)


def _spawned_children(pid: int) -> list[int]:
    """The processes `pid` started with multiprocessing's spawn (any of its threads)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _tp_worker(tmp: Path, redis_url: str, smollm_path: Path, name: str) -> tuple[Proc, str]:
    path = build_tiny_checkpoint("minimax_m2", tmp / "m2", vocab_size=49152)
    load_tokenizer(smollm_path).hf.save_pretrained(str(path))  # a worker loads one
    return start_worker(tmp, name, "both", redis_url, path, "--tensor-parallel-size=2")


def _listed(redis_url: str, worker_id: str) -> bool:
    return worker_id in {r.worker_id for r in Registry(redis.Redis.from_url(redis_url)).workers()}


def test_a_rank_killed_mid_stream_ends_the_stream_naming_it(
    tmp_path: Path, redis_url: str, smollm_path: Path
) -> None:
    """Rank 0 waits in the step's sum for the dead rank: the sum fails at once (gloo reads
    the closed connection), and the stream ends UNAVAILABLE (a router resumes it elsewhere)
    saying which rank went and how; the worker leaves the registry."""
    proc, address = _tp_worker(tmp_path, redis_url, smollm_path, "tp-dies-busy")
    try:
        (follower,) = _spawned_children(proc.proc.pid)
        params = params_to_pb(SamplingParams(max_tokens=990, ignore_eos=True))
        req = worker_pb2.DecodeRequest(request_id="long", prompt_token_ids=[7] * 30, params=params)
        with grpc.insecure_channel(address) as channel:
            chunks = worker_pb2_grpc.WorkerStub(channel).Decode(req, timeout=120)
            next(chunks)
            os.kill(follower, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                for _ in chunks:
                    pass
        assert time.monotonic() - killed < 20
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tensor-parallel rank 1 exited (signal 9)" in str(ended.value.details())
        proc.wait_for("leaves the registry", 10)
        assert not _listed(redis_url, "tp-dies-busy")
    finally:
        proc.stop(signal.SIGTERM)


def test_an_idle_worker_whose_rank_died_leaves_the_registry(
    tmp_path: Path, redis_url: str, smollm_path: Path
) -> None:
    """No step runs into the dead rank while the worker idles: its health check asks, so
    it leaves the registry within a heartbeat rather than when a request finds it broken,
    and a request that still comes is refused naming the rank."""
    proc, address = _tp_worker(tmp_path, redis_url, smollm_path, "tp-dies-idle")
    try:
        assert _listed(redis_url, "tp-dies-idle")
        (follower,) = _spawned_children(proc.proc.pid)
        os.kill(follower, signal.SIGKILL)
        line = proc.wait_for("leaves the registry", 10)
        assert "tensor-parallel rank 1 exited (signal 9)" in line
        assert not _listed(redis_url, "tp-dies-idle")
        with grpc.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            assert not stub.Health(worker_pb2.HealthRequest(), timeout=10).ok
            params = params_to_pb(SamplingParams(max_tokens=4))
            late = worker_pb2.DecodeRequest(
                request_id="late", prompt_token_ids=[7] * 30, params=params
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Decode(late, timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tensor-parallel rank 1 exited (signal 9)" in str(refused.value.details())
    finally:
        proc.stop(signal.SIGTERM)
