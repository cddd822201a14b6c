"""Tensor-parallel workers in disaggregated pools: a `tandem worker --role prefill` and a
`--role decode`, each on two ranks (two processes, each rank's KV cache holding half the
KV heads, each registered with its own NIXL agent). The decode worker's rank i reads the
prompt's blocks from the prefill worker's rank i over NIXL; greedy output must equal
transformers' on the same checkpoint, the bytes read must be both ranks' halves of the
blocks, and the prefill worker's lease must be released only once both ranks have read.

Between sizes (engine/transfer/heads.py), the one-rank worker holds its two KV heads in two
head groups (--kv-head-groups 2): a one-rank decode worker reads a group from each prefill
rank, and each rank of a two-rank decode worker reads its group from a one-rank prefill
worker; the same tokens, exactly each head's bytes once. A one-rank decode worker without
head groups refuses the two-rank peer, saying what to set, and recomputes its prompts
(counted), still with transformers' tokens."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from engine import SamplingParams
from engine.tokenizer import load_tokenizer
from services.cluster.launch import Proc, start_worker
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb
from tests.helpers.hf_reference import build_tiny_checkpoint, hf_greedy, load_hf
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
NEW_TOKENS = 12
BLOCK_SIZE = 16
# role, tensor-parallel size, KV head groups
WORKERS = {
    "prefill-tp2": ("prefill", 2, 1),
    "decode-tp2": ("decode", 2, 1),
    "decode-tp1": ("decode", 1, 1),
    "decode-tp1-groups": ("decode", 1, 2),
    "prefill-tp1-groups": ("prefill", 1, 2),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Path:
    path = build_tiny_checkpoint("minimax_m2", tmp_path_factory.mktemp("tp") / "m2", 49152)
    load_tokenizer(smollm_path).hf.save_pretrained(str(path))  # a worker loads one
    return path


@pytest.fixture(scope="module")
def workers(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, tuple[Proc, worker_pb2_grpc.WorkerStub]]]:
    tmp = tmp_path_factory.mktemp("tp-workers")
    started: dict[str, tuple[Proc, worker_pb2_grpc.WorkerStub]] = {}
    try:
        for name, (role, size, groups) in WORKERS.items():
            proc, address = start_worker(
                tmp,
                name,
                role,
                redis_url,
                checkpoint,
                f"--tensor-parallel-size={size}",
                f"--kv-head-groups={groups}",
                f"--block-size={BLOCK_SIZE}",
            )
            started[name] = (proc, worker_pb2_grpc.WorkerStub(grpc.insecure_channel(address)))
        yield started
    finally:
        for proc, _ in started.values():
            proc.stop(signal.SIGTERM)


def _hand_off(
    prefill: worker_pb2_grpc.WorkerStub,
    decode: worker_pb2_grpc.WorkerStub,
    rid: str,
    prompt: list[int],
) -> tuple[list[int], list[worker_pb2.DecodeChunk]]:
    params = params_to_pb(SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    pre = prefill.Prefill(
        worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, params=params),
        timeout=120,
    )
    req = worker_pb2.DecodeRequest(request_id=rid, prompt_token_ids=prompt, params=params)
    req.kv.CopyFrom(pre.kv)
    req.first_token = pre.first_token
    chunks = list(decode.Decode(req, timeout=120))
    return [pre.first_token, *(t for c in chunks for t in c.token_ids)], chunks


def test_two_rank_pools_read_each_ranks_heads_over_nixl(
    checkpoint: Path,
    workers: dict[str, tuple[Proc, worker_pb2_grpc.WorkerStub]],
    redis_url: str,
) -> None:
    record = Registry(redis.Redis.from_url(redis_url)).get("prefill-tp2")
    assert record is not None and len(record.nixl_ranks) == 1  # rank 1's agent, published
    rank_block_bytes = record.kv_block_bytes  # one rank's half of the KV heads
    hf = load_hf(checkpoint)
    rng = random.Random(7)
    for i, n in enumerate((9, 40, 70)):
        prompt = [rng.randrange(49152) for _ in range(n)]
        tokens, chunks = _hand_off(
            workers["prefill-tp2"][1], workers["decode-tp2"][1], f"tp{i}", prompt
        )
        assert tokens == hf_greedy(hf, prompt, NEW_TOKENS)[0]
        assert not chunks[0].kv_recomputed
        blocks = -(-n // BLOCK_SIZE)
        assert chunks[0].kv_bytes_read == 2 * rank_block_bytes * blocks  # both ranks' halves

    def stats() -> dict[str, worker_pb2.StatsResponse]:
        return {
            name: workers[name][1].Stats(worker_pb2.StatsRequest(), timeout=10)
            for name in ("prefill-tp2", "decode-tp2")
        }

    assert_idle(stats)  # the leases released: rank 0 was told once both ranks had read


@pytest.mark.parametrize(
    ("prefill", "decode"),
    [("prefill-tp2", "decode-tp1-groups"), ("prefill-tp1-groups", "decode-tp2")],
)
def test_pools_of_different_sizes_read_each_head_once(
    checkpoint: Path,
    workers: dict[str, tuple[Proc, worker_pb2_grpc.WorkerStub]],
    redis_url: str,
    prefill: str,
    decode: str,
) -> None:
    registry = Registry(redis.Redis.from_url(redis_url))
    one_head = {}  # one head's block (of one group, or of one of two ranks), each side
    for name in (prefill, decode):
        record = registry.get(name)
        assert record is not None and record.kv_heads * (1 + len(record.nixl_ranks)) == 2
        assert record.kv_heads // record.kv_head_groups == 1
        one_head[name] = record.kv_block_bytes
    assert one_head[prefill] == one_head[decode]
    hf = load_hf(checkpoint)
    rng = random.Random(9)
    for i, n in enumerate((9, 40, 70)):
        prompt = [rng.randrange(49152) for _ in range(n)]
        rid = f"{prefill}-{decode}-{i}"
        tokens, chunks = _hand_off(workers[prefill][1], workers[decode][1], rid, prompt)
        assert tokens == hf_greedy(hf, prompt, NEW_TOKENS)[0]
        assert not chunks[0].kv_recomputed
        blocks = -(-n // BLOCK_SIZE)
        assert chunks[0].kv_bytes_read == 2 * one_head[decode] * blocks  # each head once

    def stats() -> dict[str, worker_pb2.StatsResponse]:
        return {
            name: workers[name][1].Stats(worker_pb2.StatsRequest(), timeout=10)
            for name in (prefill, decode)
        }

    assert_idle(stats)  # the leases released once every part of each read had ended


def test_a_decode_worker_of_another_size_recomputes_and_says_why(
    checkpoint: Path, workers: dict[str, tuple[Proc, worker_pb2_grpc.WorkerStub]]
) -> None:
    prompt = [random.Random(8).randrange(49152) for _ in range(40)]
    tokens, chunks = _hand_off(workers["prefill-tp2"][1], workers["decode-tp1"][1], "tp1", prompt)
    assert tokens == hf_greedy(load_hf(checkpoint), prompt, NEW_TOKENS)[0]
    assert chunks[0].kv_recomputed and chunks[0].kv_bytes_read == 0
    log = workers["decode-tp1"][0].log_path.read_text()
    assert "this worker in groups of 2" in log and "--kv-head-groups" in log
    # as the router does on a recompute: the prefill worker need not hold the blocks on
    prefill = workers["prefill-tp2"][1]
    prefill.Abort(worker_pb2.AbortRequest(request_id="tp1"), timeout=10)
    assert_idle(lambda: {"prefill": prefill.Stats(worker_pb2.StatsRequest(), timeout=10)})
