"""Mock workers as real processes (`tandem worker --engine mock`): the same gRPC API, KV
blocks over NIXL and registry as real workers, no weights. The mock's tokens follow the KV
a worker holds, so matching an in-process mock engine proves the blocks arrived intact."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.model.loader import read_checkpoint, read_model_config
from services.cluster.launch import start_worker
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb
from tests.integration.test_workers import (
    Workers,
    _assert_idle,
    _decode,
    _prefill,
    _stats,
    _wait_for_peers,
)

pytestmark = pytest.mark.slow
BS, NUM_BLOCKS = 16, 256
DECODE_MS = 40.0  # the decode worker's --mock-timing: slow enough to see from outside


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, smollm_path: Path
) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp("mock-workers")
    mock = ("--engine=mock", f"--num-blocks={NUM_BLOCKS}")
    specs = {
        "prefill-a": ("prefill", mock),
        "decode-a": ("decode", (*mock, f"--mock-timing=decode_ms={DECODE_MS}")),
    }
    w = Workers(tmp, redis_url, smollm_path, {}, {})
    try:
        for worker_id, (role, extra) in specs.items():
            proc, address = start_worker(tmp, worker_id, role, redis_url, smollm_path, *extra)
            w.procs[worker_id], w.addresses[worker_id] = proc, address
        _wait_for_peers(w, ["prefill-a"])
        yield w
    finally:
        for proc in w.procs.values():
            proc.stop(signal.SIGTERM)


def _in_process(model: Path, prompt: list[int], n: int) -> list[int]:
    """The same mock in this process: what an intact KV hand-off must reproduce."""
    cfg = EngineConfig(model=str(model), backend="mock", cache=CacheConfig(num_blocks=64))
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    return Engine(cfg, load_tokenizer_files=False).generate([prompt], params)[0].token_ids


def test_prefill_then_decode_over_nixl(workers: Workers, smollm_path: Path) -> None:
    prompt = [1000 + 37 * i % 20000 for i in range(70)]  # 5 blocks, the last partial
    record = workers.record("prefill-a")
    assert (record.num_blocks, record.kv_block_bytes) == (NUM_BLOCKS, 2 * BS * 4)

    pre = _prefill(workers, "prefill-a", "m1", prompt)
    assert pre.kv.num_tokens == len(prompt) and len(pre.kv.block_ids) == 5
    started = time.monotonic()
    tokens, first = _decode(workers, "m1", prompt, pre)
    elapsed = time.monotonic() - started
    assert not first.kv_recomputed
    assert first.kv_bytes_read == 5 * record.kv_block_bytes
    assert tokens == _in_process(smollm_path, prompt, 24)
    # 23 decode steps of at least step_ms + decode_ms each: the flag reached the engine.
    assert elapsed >= 23 * (2.0 + DECODE_MS) / 1000
    assert _stats(workers, "decode-a").num_blocks == NUM_BLOCKS
    _assert_idle(workers)


def test_prefix_cached_on_the_decode_worker_is_not_read_again(workers: Workers) -> None:
    prompt = [3000 + 11 * i for i in range(40)]
    pre = _prefill(workers, "prefill-a", "p1", prompt)
    first_tokens, first = _decode(workers, "p1", prompt, pre)
    assert first.kv_bytes_read == 3 * workers.record("prefill-a").kv_block_bytes
    pre = _prefill(workers, "prefill-a", "p2", prompt)
    assert pre.num_cached_tokens == 32  # the prefill worker's own prefix cache
    tokens, again = _decode(workers, "p2", prompt, pre)
    assert again.num_cached_tokens == 32
    assert again.kv_bytes_read == workers.record("prefill-a").kv_block_bytes  # the last one
    assert tokens == first_tokens
    _assert_idle(workers)


def test_the_mock_reads_the_real_config_without_the_weights(smollm_path: Path) -> None:
    assert read_model_config(smollm_path) == read_checkpoint(smollm_path)[0]


def test_a_full_worker_refuses_at_once_and_serves_what_it_took(
    tmp_path: Path, redis_url: str, smollm_path: Path
) -> None:
    """One place in the batch and one in the queue: of four calls at once, those that find
    the queue full get RESOURCE_EXHAUSTED at once (the router then tries another worker),
    and those it took run to their end."""
    proc, address = start_worker(
        tmp_path,
        "decode-full",
        "decode",
        redis_url,
        smollm_path,
        "--engine=mock",
        "--num-blocks=64",
        "--max-num-seqs=1",
        "--max-waiting=1",
        f"--mock-timing=decode_ms={DECODE_MS}",
    )
    params = params_to_pb(SamplingParams(max_tokens=8, ignore_eos=True))

    async def one(stub: worker_pb2_grpc.WorkerStub, i: int) -> int | grpc.StatusCode:
        req = worker_pb2.DecodeRequest(
            request_id=f"r{i}", prompt_token_ids=[1, 2, 3], params=params
        )
        try:
            return sum([len(c.token_ids) async for c in stub.Decode(req, timeout=60)])
        except grpc.aio.AioRpcError as e:
            return e.code()

    async def four() -> list[int | grpc.StatusCode]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            return await asyncio.gather(*(one(stub, i) for i in range(4)))

    try:
        results = asyncio.run(four())
        served = [r for r in results if isinstance(r, int)]
        assert 1 <= len(served) <= 2 and all(n == 8 for n in served), results
        assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4 - len(served)
        with grpc.insecure_channel(address) as channel:
            stats = worker_pb2_grpc.WorkerStub(channel).Stats(worker_pb2.StatsRequest(), timeout=10)
        assert stats.idle and stats.running == stats.waiting == 0
    finally:
        proc.stop(signal.SIGTERM)


def test_a_prompts_hand_off_does_not_wait_behind_the_next_prompt(
    tmp_path: Path, redis_url: str, smollm_path: Path
) -> None:
    """Prompt A's step ends while B's (500 ms here) begins: A's reply, with its leased KV
    handle, comes back at the end of A's step, not after B's. Its lease was once asked
    for only when A's output reached the gRPC handler, by then behind B's whole step."""
    proc, address = start_worker(
        tmp_path,
        "prefill-slow",
        "prefill",
        redis_url,
        smollm_path,
        "--engine=mock",
        "--num-blocks=256",
        "--mock-timing=prefill_ms_per_token=0.5",  # A (200 tokens) 0.1 s, B (1,000) 0.5 s
    )
    params = params_to_pb(SamplingParams(max_tokens=8, ignore_eos=True))

    async def prefill(stub: worker_pb2_grpc.WorkerStub, rid: str, n: int) -> float:
        prompt = [1000 + 7 * i % 20000 for i in range(n)]
        req = worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, params=params)
        started = time.monotonic()
        reply = await stub.Prefill(req, timeout=60)
        assert reply.kv.num_tokens == n
        return time.monotonic() - started

    async def both() -> tuple[float, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            a = asyncio.ensure_future(prefill(stub, "a", 200))
            await asyncio.sleep(0.03)  # B arrives while A's step runs
            b = await prefill(stub, "b", 1000)
            return await a, b

    try:
        a, b = asyncio.run(both())
        # A alone: ~0.1 s; behind B's step it took >= 0.6 s
        assert a < 0.4 and b > 0.4, (a, b)
    finally:
        proc.stop(signal.SIGTERM)
