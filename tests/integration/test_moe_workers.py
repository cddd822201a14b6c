"""Mixture-of-experts models through a disaggregated pair of real worker processes: tiny
random Qwen3-MoE and MiniMax-M2 checkpoints prefilled on one `tandem worker`, their KV
blocks read over NIXL by another that decodes. Greedy output must equal
transformers on the same checkpoint, and both workers end idle."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from engine import SamplingParams
from engine.tokenizer import load_tokenizer
from services.cluster.launch import Proc, start_worker
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb
from tests.helpers.hf_reference import build_tiny_checkpoint, hf_greedy, load_hf
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
NEW_TOKENS = 20


@pytest.fixture(scope="module", params=["qwen3_moe", "minimax_m2"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm_path: Path
) -> Path:
    # SmolLM's vocabulary and tokenizer: a worker loads the tokenizer beside the weights
    kind = request.param
    path = build_tiny_checkpoint(kind, tmp_path_factory.mktemp("moe") / kind, vocab_size=49152)
    load_tokenizer(smollm_path).hf.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def stubs(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, worker_pb2_grpc.WorkerStub]]:
    tmp = tmp_path_factory.mktemp("moe-workers")
    procs: list[Proc] = []
    stubs = {}
    try:
        for role in ("prefill", "decode"):
            worker_id = f"moe-{role}-{checkpoint.name}"
            proc, address = start_worker(tmp, worker_id, role, redis_url, checkpoint)
            procs.append(proc)
            stubs[role] = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(address))
        yield stubs
    finally:
        for proc in procs:
            proc.stop(signal.SIGTERM)


def test_prefill_and_remote_decode_match_transformers(
    checkpoint: Path, stubs: dict[str, worker_pb2_grpc.WorkerStub]
) -> None:
    rng = random.Random(21)
    prompts = [[rng.randrange(49152) for _ in range(n)] for n in (9, 40)]
    params = params_to_pb(SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    hf = load_hf(checkpoint)
    for i, prompt in enumerate(prompts):
        rid = f"moe-{i}"
        pre = stubs["prefill"].Prefill(
            worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, params=params),
            timeout=120,
        )
        req = worker_pb2.DecodeRequest(request_id=rid, prompt_token_ids=prompt, params=params)
        req.kv.CopyFrom(pre.kv)
        req.first_token = pre.first_token
        chunks = list(stubs["decode"].Decode(req, timeout=120))
        assert not chunks[0].kv_recomputed and chunks[0].kv_bytes_read > 0  # read over NIXL
        tokens = [pre.first_token, *(t for c in chunks for t in c.token_ids)]
        assert tokens == hf_greedy(hf, prompt, NEW_TOKENS)[0]

    def stats() -> dict[str, worker_pb2.StatsResponse]:
        return {role: s.Stats(worker_pb2.StatsRequest(), timeout=10) for role, s in stubs.items()}

    assert_idle(stats)
