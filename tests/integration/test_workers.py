"""Prefill and decode workers as real processes (`tandem worker`): gRPC between them and
the test, KV blocks over NIXL, the registry in a real Redis. Greedy output must equal
transformers on the same GGUF weights whatever path the KV took."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from engine import SamplingParams
from engine.tokenizer import Tokenizer, load_tokenizer
from services.cluster.launch import Proc, start_worker
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb
from tests.helpers.hf_reference import hf_greedy
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
BS = 16
QUESTION = "Explain in two sentences why the sky looks blue during the day, for a child."


@dataclass
class Workers:
    tmp: Path
    redis_url: str
    model: Path
    procs: dict[str, Proc]
    addresses: dict[str, str]

    def stub(self, worker_id: str) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(grpc.insecure_channel(self.addresses[worker_id]))

    def record(self, worker_id: str):  # type: ignore[no-untyped-def]
        return Registry(redis.Redis.from_url(self.redis_url)).get(worker_id)


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, smollm_path: Path
) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp("workers")
    specs = {
        # Leases of 120 s: a handle must outlive a restart of this worker (tens of seconds
        # on a busy 2-core machine) to test what a stale agent does, not an expired lease.
        "prefill-a": ("prefill", ("--lease-s=120",)),
        # Leases of 1 s: less than the decode side's safety margin, so they always count as
        # expired by the time a read could finish.
        "prefill-short": ("prefill", ("--lease-s=1.0",)),
        "decode-a": ("decode", ()),
    }
    w = Workers(tmp, redis_url, smollm_path, {}, {})
    try:
        for worker_id, (role, extra) in specs.items():
            proc, address = start_worker(tmp, worker_id, role, redis_url, smollm_path, *extra)
            w.procs[worker_id], w.addresses[worker_id] = proc, address
        _wait_for_peers(w, ["prefill-a", "prefill-short"])
        yield w
    finally:
        for proc in w.procs.values():
            proc.stop(signal.SIGTERM)


def _wait_for_peers(w: Workers, names: list[str], timeout_s: float = 30.0) -> None:
    """The decode worker loads peers from the registry within half a second of a join."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = w.procs["decode-a"].tail(200)
        agents = [w.record(n).nixl_agent for n in names]
        if all(f"agent {a})" in log for a in agents):
            return
        time.sleep(0.2)
    raise TimeoutError(f"decode-a did not load {names}")


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


def _prompt(tokenizer: Tokenizer, text: str = QUESTION) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}])


def _params(max_tokens: int = 24) -> worker_pb2.SamplingParams:
    return params_to_pb(SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def _prefill(w: Workers, worker_id: str, rid: str, prompt: list[int], n: int = 24):  # type: ignore[no-untyped-def]
    req = worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, params=_params(n))
    return w.stub(worker_id).Prefill(req, timeout=60)


def _decode(w: Workers, rid: str, prompt: list[int], pre=None, n: int = 24):  # type: ignore[no-untyped-def]
    req = worker_pb2.DecodeRequest(request_id=rid, prompt_token_ids=prompt, params=_params(n))
    if pre is not None:
        req.kv.CopyFrom(pre.kv)
        req.first_token = pre.first_token
    chunks = list(w.stub("decode-a").Decode(req, timeout=120))
    tokens = ([pre.first_token] if pre is not None else []) + [
        t for c in chunks for t in c.token_ids
    ]
    return tokens, chunks[0]


def _stats(w: Workers, worker_id: str) -> worker_pb2.StatsResponse:
    return w.stub(worker_id).Stats(worker_pb2.StatsRequest(), timeout=10)


def _assert_idle(w: Workers) -> None:
    assert_idle(lambda: {n: _stats(w, n) for n in w.addresses})


def test_disaggregated_greedy_matches_transformers(
    workers: Workers, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    prompt = _prompt(tokenizer)
    pre = _prefill(workers, "prefill-a", "g1", prompt)
    assert pre.kv.worker_id == "prefill-a" and pre.kv.num_tokens == len(prompt)
    assert len(pre.kv.block_ids) == -(-len(prompt) // BS)
    tokens, first = _decode(workers, "g1", prompt, pre)
    assert not first.kv_recomputed
    assert tokens == hf_greedy(smollm_hf, prompt, 24)[0]
    _assert_idle(workers)


def test_only_the_missing_blocks_move(workers: Workers, tokenizer: Tokenizer) -> None:
    block_bytes = workers.record("prefill-a").kv_block_bytes
    prompt = _prompt(tokenizer, "Name five rivers of Europe and the seas they flow into.")
    before = _stats(workers, "decode-a").kv_bytes_read
    pre = _prefill(workers, "prefill-a", "m1", prompt)
    _, first = _decode(workers, "m1", prompt, pre)
    # The chat template's system prompt (a block) may be cached here from earlier requests.
    missing = -(-len(prompt) // BS) - first.num_cached_tokens // BS
    assert missing >= 2
    assert first.kv_bytes_read == missing * block_bytes
    assert _stats(workers, "decode-a").kv_bytes_read - before == missing * block_bytes

    # Same conversation, one more turn: the decode worker already holds the shared prefix.
    shared = len(prompt) // BS  # full blocks of the first prompt, now cached on decode-a
    longer = prompt[: shared * BS] + _prompt(tokenizer, "And which is the longest?")
    pre = _prefill(workers, "prefill-a", "m2", longer)
    _, first = _decode(workers, "m2", longer, pre)
    missing = -(-len(longer) // BS) - shared
    assert first.num_cached_tokens == shared * BS
    assert first.kv_bytes_read == missing * block_bytes
    _assert_idle(workers)


def test_expired_lease_is_recomputed_not_read(
    workers: Workers, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    prompt = _prompt(tokenizer, "Write one sentence about lighthouses.")
    expired_before = _stats(workers, "prefill-short").leases_expired
    pre = _prefill(workers, "prefill-short", "e1", prompt)
    time.sleep(1.3)  # the 1 s lease runs out; its blocks may be reused by now
    tokens, first = _decode(workers, "e1", prompt, pre)
    assert first.kv_recomputed and first.kv_bytes_read == 0
    assert tokens == hf_greedy(smollm_hf, prompt, 24)[0]
    assert _stats(workers, "prefill-short").leases_expired == expired_before + 1
    _assert_idle(workers)


def test_cancelled_decode_and_abandoned_prefill_free_their_blocks(
    workers: Workers, tokenizer: Tokenizer
) -> None:
    prompt = _prompt(tokenizer, "Count slowly from one to one hundred.")
    pre = _prefill(workers, "prefill-a", "c1", prompt, n=400)
    assert _stats(workers, "prefill-a").leases == 1

    async def read_a_little() -> int:
        async with grpc.aio.insecure_channel(workers.addresses["decode-a"]) as ch:
            req = worker_pb2.DecodeRequest(
                request_id="c1", prompt_token_ids=prompt, params=_params(400)
            )
            req.kv.CopyFrom(pre.kv)
            req.first_token = pre.first_token
            call = worker_pb2_grpc.WorkerStub(ch).Decode(req)
            seen = 0
            async for chunk in call:
                seen += len(chunk.token_ids)
                if seen >= 3:
                    call.cancel()  # the client goes away mid-stream
                    break
            return seen

    assert asyncio.run(read_a_little()) >= 3
    # A prompt prefilled but never decoded: the router aborts it on the prefill worker.
    _prefill(workers, "prefill-a", "c2", prompt)
    assert _stats(workers, "prefill-a").leases == 1
    assert workers.stub("prefill-a").Abort(worker_pb2.AbortRequest(request_id="c2")).found
    _assert_idle(workers)


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("prefill_on_decode", grpc.StatusCode.FAILED_PRECONDITION),
        ("decode_on_prefill", grpc.StatusCode.FAILED_PRECONDITION),
        ("too_long", grpc.StatusCode.INVALID_ARGUMENT),
        ("bad_top_p", grpc.StatusCode.INVALID_ARGUMENT),
        ("no_request_id", grpc.StatusCode.INVALID_ARGUMENT),
        ("handle_for_another_prompt", grpc.StatusCode.INVALID_ARGUMENT),
        ("token_out_of_vocab", grpc.StatusCode.INVALID_ARGUMENT),
        ("resumed_past_max_tokens", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_calls_get_status_codes_and_leak_nothing(
    workers: Workers, tokenizer: Tokenizer, call: str, code: grpc.StatusCode
) -> None:
    prompt = _prompt(tokenizer)
    ok = _params()
    decode_req = worker_pb2.DecodeRequest(request_id="x", prompt_token_ids=prompt, params=ok)
    calls = {
        "prefill_on_decode": lambda: workers.stub("decode-a").Prefill(
            worker_pb2.PrefillRequest(request_id="x", prompt_token_ids=prompt, params=ok)
        ),
        "decode_on_prefill": lambda: list(workers.stub("prefill-a").Decode(decode_req)),
        "too_long": lambda: _prefill(workers, "prefill-a", "x", prompt * 200),
        "bad_top_p": lambda: workers.stub("prefill-a").Prefill(
            worker_pb2.PrefillRequest(
                request_id="x",
                prompt_token_ids=prompt,
                params=worker_pb2.SamplingParams(max_tokens=4, top_p=0.0),
            )
        ),
        "no_request_id": lambda: _prefill(workers, "prefill-a", "", prompt),
        "handle_for_another_prompt": lambda: _decode(
            workers, "x", prompt[:-3], _prefill(workers, "prefill-a", "x", prompt)
        ),
        "token_out_of_vocab": lambda: _prefill(workers, "prefill-a", "x", [10**6]),
        "resumed_past_max_tokens": lambda: list(
            workers.stub("decode-a").Decode(
                worker_pb2.DecodeRequest(
                    request_id="x", prompt_token_ids=prompt, params=ok, generated_token_ids=[5] * 24
                )
            )
        ),
    }
    with pytest.raises(grpc.RpcError) as err:
        calls[call]()
    assert err.value.code() == code, err.value.details()
    assert err.value.details()
    if call == "handle_for_another_prompt":  # the router would abort the orphaned prefill
        workers.stub("prefill-a").Abort(worker_pb2.AbortRequest(request_id="x"))
    _assert_idle(workers)


def test_a_resumed_request_continues_as_if_never_interrupted(
    workers: Workers, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    """What the router sends when a request's decode worker failed mid-stream: the prompt
    and the tokens already streamed. Greedy, the rest is what the whole run would give."""
    prompt = _prompt(tokenizer, "Which planet is the largest, and why?")
    want = hf_greedy(smollm_hf, prompt, 16)[0]
    req = worker_pb2.DecodeRequest(
        request_id="resumed", prompt_token_ids=prompt, params=_params(16)
    )
    req.generated_token_ids.extend(want[:6])
    chunks = list(workers.stub("decode-a").Decode(req, timeout=120))
    assert [t for c in chunks for t in c.token_ids] == want[6:]
    assert chunks[-1].finished and chunks[-1].finish_reason == "length"
    _assert_idle(workers)


def test_restarted_prefill_worker_is_never_read_through_a_stale_agent(
    workers: Workers, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    prompt = _prompt(tokenizer, "What do bees make?")
    want = hf_greedy(smollm_hf, prompt, 24)[0]  # before the lease starts running
    stale = _prefill(workers, "prefill-a", "r1", prompt)  # its lease has 120 s to run
    old_agent = workers.record("prefill-a").nixl_agent
    assert workers.procs["prefill-a"].stop(signal.SIGTERM) == 0
    proc, address = start_worker(
        workers.tmp, "prefill-a", "prefill", workers.redis_url, workers.model
    )
    workers.procs["prefill-a"], workers.addresses["prefill-a"] = proc, address
    assert workers.record("prefill-a").nixl_agent != old_agent
    _wait_for_peers(workers, ["prefill-a"])
    decode_log = workers.procs["decode-a"].tail(400)
    assert f"dropped NIXL peer prefill-a (agent {old_agent})" in decode_log

    # A handle from before the restart names an agent that no longer exists: recompute.
    tokens, first = _decode(workers, "r1", prompt, stale)
    assert first.kv_recomputed and tokens == want
    assert f"unknown peer '{old_agent}'" in workers.procs["decode-a"].tail(50)
    # The restarted worker's own handles are read through its new agent.
    tokens, first = _decode(workers, "r2", prompt, _prefill(workers, "prefill-a", "r2", prompt))
    assert not first.kv_recomputed and first.kv_bytes_read > 0 and tokens == want
    _assert_idle(workers)
