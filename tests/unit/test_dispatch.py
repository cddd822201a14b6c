"""The per-request flow (services/router/dispatch.py) against fake WorkerClients: what each
worker is asked, what the client gets, and what happens when a worker fails or the client
goes away. Real workers run it in tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from engine.sampling_params import SamplingParams
from engine.transfer.exchange import KVHandle
from services.pb.events_pb2 import WorkerRecord
from services.router.backend import BackendError, GenerateRequest, TokenDelta
from services.router.cluster_view import ClusterView
from services.router.dispatch import DispatchConfig, Dispatcher
from services.router.metrics import RouterMetrics
from services.router.routing import Policy
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef, WorkerSet
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply

HANDLE = KVHandle("prefill-0", "agent-p0", (1, 2), 20, "lease", 2**41)
PROMPT = list(range(20))  # over local_prefill_tokens below: disaggregated


class FakeWorker:
    """Stands in for a WorkerClient: records calls, answers from a script."""

    def __init__(self, prefill: PrefillReply | Exception | None = None, chunks=(), fail=None):  # type: ignore[no-untyped-def]
        self.prefill_reply = prefill
        self.chunks: list[DecodeReply] = list(chunks)
        self.fail: WorkerError | None = fail  # raised by decode after the chunks
        self.prefills: list[PrefillCall] = []
        self.decodes: list[DecodeCall] = []
        self.aborted: list[str] = []
        self.stream_closed = False

    async def prefill(self, call: PrefillCall, timeout_s: float) -> PrefillReply:
        self.prefills.append(call)
        if isinstance(self.prefill_reply, Exception):
            raise self.prefill_reply
        assert self.prefill_reply is not None
        return self.prefill_reply

    async def decode(self, call: DecodeCall) -> AsyncGenerator[DecodeReply, None]:
        self.decodes.append(call)
        try:
            for chunk in self.chunks:
                yield chunk
            if self.fail is not None:
                raise self.fail
        finally:
            self.stream_closed = True

    async def abort(self, request_id: str, timeout_s: float = 5.0) -> bool:
        self.aborted.append(request_id)
        return True

    async def close(self, grace_s: float | None = None) -> None:
        pass


def _dispatcher(
    balance: bool = True, attempts: int = 3, **fakes: FakeWorker
) -> tuple[Dispatcher, RouterMetrics]:
    workers = WorkerSet(registry=None)  # type: ignore[arg-type]  # never refreshed
    for worker_id, fake in fakes.items():
        record = WorkerRecord(worker_id=worker_id, role=worker_id.split("-")[0], block_size=4)
        workers.workers[worker_id] = WorkerRef(record, fake)  # type: ignore[arg-type]
    metrics = RouterMetrics()
    config = DispatchConfig(
        routing="round-robin",
        local_prefill_tokens=8,
        balance_prefill=balance,
        decode_attempts=attempts,
    )
    view = ClusterView(workers, metrics)
    return Dispatcher(view, config, metrics, Policy("round-robin", None)), metrics


def _run(d: Dispatcher, prompt: list[int] = PROMPT, take: int | None = None) -> list[TokenDelta]:
    async def go() -> list[TokenDelta]:
        request = GenerateRequest("r1", prompt, SamplingParams(max_tokens=4))
        out = []
        stream = d.generate(request)
        async for delta in stream:
            out.append(delta)
            if take is not None and len(out) == take:
                break
        await stream.aclose()  # what the HTTP edge does when a client goes away
        await d.close()
        return out

    return asyncio.run(go())


def _chunk(tokens: list[int], done: bool = False, **kw: Any) -> DecodeReply:
    return DecodeReply(tokens, [], done, "length" if done else None, 12, **kw)


def test_disaggregated_hands_the_kv_handle_and_first_token_to_the_decode_worker() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([5], kv_bytes_read=100), _chunk([6], done=True)])
    d, metrics = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = _run(d)
    assert [o.token_ids for o in out] == [[42], [5], [6]]
    assert [o.route for o in out] == ["disaggregated", "disaggregated", ""]
    assert out[0].num_cached_tokens == 8 and out[1].num_cached_tokens == 0  # prefill's count
    assert prefill.prefills == [PrefillCall("r1", PROMPT, SamplingParams(max_tokens=4))]
    assert decode.decodes[0].handle == HANDLE and decode.decodes[0].first_token == 42
    assert metrics.nixl_bytes._value.get() == 100
    assert prefill.aborted == [] and decode.stream_closed


def test_short_prompts_prefill_on_the_decode_worker() -> None:
    prefill, decode = FakeWorker(), FakeWorker(chunks=[_chunk([5, 6], done=True)])
    d, _ = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = _run(d, prompt=[1, 2, 3])
    assert [(o.token_ids, o.route, o.num_cached_tokens) for o in out] == [
        ([5, 6], "local_prefill", 12)
    ]
    assert prefill.prefills == [] and decode.decodes[0].handle is None


@pytest.mark.parametrize(
    ("prefill_queued", "decode_queued", "balance", "route"),
    [
        (1000, 0, True, "local_prefill_queue"),  # the decode worker starts it sooner
        (1000, 0, False, "disaggregated"),  # --no-prefill-balance
        (25, 10, True, "disaggregated"),  # 10 + 20 tokens here is no sooner than 25 there
        (0, 0, True, "disaggregated"),  # an idle prefill pool always takes it
    ],
)
def test_a_longer_prefill_queue_sends_the_prompt_to_the_decode_worker(
    prefill_queued: int, decode_queued: int, balance: bool, route: str
) -> None:
    prefill = FakeWorker(PrefillReply(42, None, 0, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([5], done=True, kv_bytes_read=1)])
    d, metrics = _dispatcher(balance, **{"prefill-0": prefill, "decode-0": decode})
    d.cluster.workers.workers["prefill-0"].record.queued_prefill_tokens = prefill_queued
    d.cluster.workers.workers["decode-0"].record.queued_prefill_tokens = decode_queued
    out = _run(d)
    assert out[0].route == route
    assert (prefill.prefills == []) == (route == "local_prefill_queue")
    assert all(w.in_flight_tokens == 0 for w in d.cluster.workers.workers.values())


def test_a_local_prefill_counts_as_queued_on_the_decode_worker_until_its_first_token() -> None:
    prefill = FakeWorker()
    decode = FakeWorker(chunks=[_chunk([5]), _chunk([6], done=True)])
    d, _ = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    ref = d.cluster.workers.workers["decode-0"]
    seen = []

    async def go() -> None:
        stream = d.generate(GenerateRequest("r1", [1, 2, 3], SamplingParams(max_tokens=4)))
        async for _ in stream:
            seen.append(ref.in_flight_tokens)
        await d.close()

    original = decode.decode

    async def watched(call: DecodeCall) -> AsyncGenerator[DecodeReply, None]:
        seen.append(ref.in_flight_tokens)  # the call is out, no token back yet
        async for chunk in original(call):
            yield chunk

    decode.decode = watched  # type: ignore[method-assign]
    asyncio.run(go())
    assert seen == [3, 0, 0]


def test_a_failed_prefill_falls_back_to_the_decode_worker_counted() -> None:
    prefill = FakeWorker(WorkerError("unavailable", "gone"))
    decode = FakeWorker(chunks=[_chunk([5], done=True)])
    d, metrics = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = _run(d)
    assert [(o.token_ids, o.route) for o in out] == [([5], "local_prefill")]
    assert metrics.prefill_fallbacks.labels(reason="unavailable")._value.get() == 1
    assert prefill.aborted == ["r1"]  # whatever it did is freed


def test_a_failed_prefill_is_tried_on_another_prefill_worker_first() -> None:
    hung = FakeWorker(WorkerError("deadline_exceeded", "no answer in time"))
    works = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([6], done=True)])
    d, metrics = _dispatcher(**{"prefill-0": hung, "prefill-1": works, "decode-0": decode})
    out = _run(d)
    assert [o.token_ids for o in out] == [[42], [6]]
    assert len(hung.prefills) == len(works.prefills) == 1 and hung.aborted == ["r1"]
    assert decode.decodes[0].handle == HANDLE  # from the worker that answered
    assert metrics.prefill_retries.labels(reason="deadline_exceeded")._value.get() == 1
    assert metrics.prefill_fallbacks.labels(reason="deadline_exceeded")._value.get() == 0


def test_a_worker_that_keeps_failing_opens_its_breaker_and_gets_no_more_calls() -> None:
    failing = FakeWorker(WorkerError("unavailable", "broken"))
    other = FakeWorker(WorkerError("unavailable", "broken too"))
    decode = FakeWorker(chunks=[_chunk([5], done=True)])
    d, metrics = _dispatcher(**{"prefill-0": failing, "prefill-1": other, "decode-0": decode})

    async def four_requests() -> list[list[str]]:
        routes = []
        for i in range(4):  # each tries both prefill workers, then prefills locally
            request = GenerateRequest(f"r{i}", PROMPT, SamplingParams(max_tokens=4))
            routes.append([delta.route async for delta in d.generate(request)])
        await d.close()
        return routes

    routes = asyncio.run(four_requests())
    assert routes == [["local_prefill"]] * 4
    # Three failures in a row open each breaker: the fourth request asks neither.
    assert len(failing.prefills) == len(other.prefills) == 3
    for worker in ("prefill-0", "prefill-1"):
        assert metrics.breaker_changes.labels(worker=worker, change="opened")._value.get() == 1
    assert metrics.prefill_fallbacks.labels(reason="no_prefill_worker")._value.get() == 1


def test_a_rejected_request_is_the_clients_error() -> None:
    prefill = FakeWorker(WorkerError("invalid_argument", "top_p must be in (0, 1]"))
    d, _ = _dispatcher(**{"prefill-0": prefill, "decode-0": FakeWorker()})
    with pytest.raises(BackendError) as e:
        _run(d)
    assert (e.value.status, e.value.message) == (400, "top_p must be in (0, 1]")


def _retries(metrics: RouterMetrics, when: str) -> float:
    return metrics.decode_retries.labels(when=when)._value.get()  # type: ignore[no-any-return]


def test_a_decode_worker_failing_mid_stream_hands_the_rest_to_another() -> None:
    dies = FakeWorker(chunks=[_chunk([5])], fail=WorkerError("unavailable", "Stream removed"))
    takes_over = FakeWorker(chunks=[_chunk([6]), _chunk([7], done=True)])
    d, metrics = _dispatcher(**{"decode-0": dies, "decode-1": takes_over})
    out = _run(d, prompt=[1])
    assert [o.token_ids for o in out] == [[5], [6], [7]]  # no gap, nothing twice
    assert [o.route for o in out] == ["local_prefill", "", ""]
    assert [o.num_cached_tokens for o in out] == [12, 0, 0]  # its hits cover our own output
    resumed = takes_over.decodes[0]
    assert (resumed.prompt_token_ids, resumed.generated_token_ids) == ([1], [5])
    assert resumed.handle is None and resumed.params == SamplingParams(max_tokens=4)
    assert dies.aborted == ["r1"] and _retries(metrics, "mid_stream") == 1


def test_a_disaggregated_decode_failing_before_its_first_token_resumes_and_frees_the_kv() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    dies = FakeWorker(fail=WorkerError("unavailable", "connection reset"))
    takes_over = FakeWorker(chunks=[_chunk([6], done=True)])
    d, metrics = _dispatcher(**{"prefill-0": prefill, "decode-0": dies, "decode-1": takes_over})
    out = _run(d)
    assert [o.token_ids for o in out] == [[42], [6]]
    assert takes_over.decodes[0].generated_token_ids == [42]  # the client has it already
    assert prefill.aborted == ["r1"]  # its held blocks will never be read now
    assert _retries(metrics, "mid_stream") == 1


def test_a_stream_cut_short_is_a_failure_too() -> None:
    cut = FakeWorker(chunks=[_chunk([5])])  # ends without a finished chunk, no error
    takes_over = FakeWorker(chunks=[_chunk([6], done=True)])
    d, _ = _dispatcher(**{"decode-0": cut, "decode-1": takes_over})
    assert [o.token_ids for o in _run(d, prompt=[1])] == [[5], [6]]


def test_with_no_other_decode_worker_the_client_gets_a_502_that_says_why() -> None:
    dies = FakeWorker(chunks=[_chunk([5])], fail=WorkerError("unavailable", "recvmsg: reset"))
    d, _ = _dispatcher(**{"decode-0": dies})
    with pytest.raises(BackendError) as e:
        _run(d, prompt=[1])
    assert e.value.status == 502 and "no other one is available" in e.value.message
    assert "recvmsg" not in e.value.message  # an internal detail: logged, not sent


def test_decode_attempts_are_bounded() -> None:
    fakes = {f"decode-{i}": FakeWorker(fail=WorkerError("unavailable", "down")) for i in range(3)}
    d, metrics = _dispatcher(attempts=2, **fakes)
    with pytest.raises(BackendError) as e:
        _run(d, prompt=[1])
    assert e.value.status == 502 and "failed on 2 decode workers" in e.value.message
    assert sorted(len(f.decodes) for f in fakes.values()) == [0, 1, 1]  # two workers, once each
    assert _retries(metrics, "before_first_token") == 1


def test_a_recomputed_prompt_releases_the_prefill_workers_lease() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([5], done=True, kv_recomputed=True)])
    d, metrics = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = _run(d)
    assert out[1].num_cached_tokens == 12  # the decode worker computed the prompt itself
    assert metrics.kv_recomputed._value.get() == 1
    assert prefill.aborted == ["r1"]


def test_a_client_gone_after_the_first_token_frees_both_workers() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([5]), _chunk([6]), _chunk([7], done=True)])
    d, _ = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    assert [o.token_ids for o in _run(d, take=2)] == [[42], [5]]
    assert decode.stream_closed  # the call is cancelled at once: the worker aborts
    assert prefill.aborted == []  # the decode worker read the KV already


def test_a_client_gone_before_the_decode_started_releases_the_held_blocks() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[_chunk([5], done=True)])
    d, _ = _dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    assert [o.token_ids for o in _run(d, take=1)] == [[42]]
    assert decode.decodes == [] and prefill.aborted == ["r1"]
