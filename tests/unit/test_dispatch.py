"""The per-request flow (services/router/dispatch.py) against fake WorkerClients: what each
worker is asked and what the client gets, a client that goes away included. Workers that
fail are in test_dispatch_faults.py; real workers run it in tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from engine.sampling_params import SamplingParams
from services.pb.events_pb2 import WorkerRecord
from services.router.backend import GenerateRequest
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply
from tests.helpers.dispatch_fakes import HANDLE, PROMPT, FakeWorker, chunk, dispatcher, run


def test_disaggregated_hands_the_kv_handle_and_first_token_to_the_decode_worker() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5], kv_bytes_read=100), chunk([6], done=True)])
    d, metrics = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = run(d)
    assert [o.token_ids for o in out] == [[42], [5], [6]]
    assert [o.route for o in out] == ["disaggregated", "disaggregated", ""]
    assert out[0].num_cached_tokens == 8 and out[1].num_cached_tokens == 0  # prefill's count
    assert prefill.prefills == [PrefillCall("r1", PROMPT, SamplingParams(max_tokens=4))]
    assert decode.decodes[0].handle == HANDLE and decode.decodes[0].first_token == 42
    assert metrics.nixl_bytes._value.get() == 100
    assert prefill.aborted == [] and decode.stream_closed


def test_short_prompts_prefill_on_the_decode_worker() -> None:
    prefill, decode = FakeWorker(), FakeWorker(chunks=[chunk([5, 6], done=True)])
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = run(d, prompt=[1, 2, 3])
    assert [(o.token_ids, o.route, o.num_cached_tokens) for o in out] == [
        ([5, 6], "local_prefill", 12)
    ]
    assert prefill.prefills == [] and decode.decodes[0].handle is None


def test_arrivals_count_the_prompt_work_no_prefill_worker_gets() -> None:
    """For the autoscaler's sizing (services/autoscaler/sizing.py: Demand.local_share)."""
    # at most local_prefill_tokens (8): the decode worker's; 20 tokens: a prefill worker's
    for prompt, local, prefills in (([1, 2, 3], 3, 0), (PROMPT, 0, 1)):
        prefill = FakeWorker(PrefillReply(42, None, 0, None, HANDLE))
        decode = FakeWorker(chunks=[chunk([5], done=True, kv_bytes_read=1)])
        d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
        run(d, prompt)
        count = d.arrivals.count()
        assert (count.total, count.prompt_tokens) == (1, len(prompt))
        assert count.local_prompt_tokens == local and len(prefill.prefills) == prefills


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
    decode = FakeWorker(chunks=[chunk([5], done=True, kv_bytes_read=1)])
    d, metrics = dispatcher(balance, **{"prefill-0": prefill, "decode-0": decode})
    d.cluster.workers.workers["prefill-0"].record.queued_prefill_tokens = prefill_queued
    d.cluster.workers.workers["decode-0"].record.queued_prefill_tokens = decode_queued
    out = run(d)
    assert out[0].route == route
    assert (prefill.prefills == []) == (route == "local_prefill_queue")
    assert all(w.in_flight_tokens == 0 for w in d.cluster.workers.workers.values())


def _two_ranks(record: WorkerRecord) -> None:
    """The worker's 2 KV heads over two ranks, one head a rank."""
    record.nixl_ranks.add(agent=f"agent-{record.worker_id}-rank1")
    record.kv_heads = 1


@pytest.mark.parametrize("balance", [True, False])
def test_only_a_prefill_worker_whose_kv_the_decode_worker_can_read_is_asked(
    balance: bool,
) -> None:
    """A decode rank reads whole head groups from the prefill ranks that hold them: a
    prefill worker of two ranks (a head each) for a one-rank decode worker holding both
    heads in one group would compute the prompt for nothing (the decode worker recomputes
    it). With none it can read, the decode worker prefills, counted; with its heads in two
    groups, it reads the two-rank worker."""
    other = FakeWorker(PrefillReply(42, None, 0, None, HANDLE))  # two ranks
    decode = FakeWorker(chunks=[chunk([5], done=True)])
    d, metrics = dispatcher(balance, **{"prefill-0": other, "decode-0": decode})
    _two_ranks(d.cluster.workers.workers["prefill-0"].record)
    out = run(d)
    assert other.prefills == [] and decode.decodes[0].handle is None
    assert out[0].route == "local_prefill" and out[0].token_ids == [5]
    assert metrics.prefill_fallbacks.labels(reason="no_prefill_worker")._value.get() == 1

    same = FakeWorker(PrefillReply(42, None, 0, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5], done=True, kv_bytes_read=1)])
    workers = {"prefill-0": FakeWorker(), "prefill-1": same, "decode-0": decode}
    d, metrics = dispatcher(balance, **workers)
    _two_ranks(d.cluster.workers.workers["prefill-0"].record)
    out = run(d)
    assert [o.token_ids for o in out] == [[42], [5]] and out[0].route == "disaggregated"
    assert len(same.prefills) == 1 and decode.decodes[0].handle == HANDLE

    two_ranks = FakeWorker(PrefillReply(42, None, 0, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5], done=True, kv_bytes_read=1)])
    d, metrics = dispatcher(balance, **{"prefill-0": two_ranks, "decode-0": decode})
    _two_ranks(d.cluster.workers.workers["prefill-0"].record)
    d.cluster.workers.workers["decode-0"].record.kv_head_groups = 2
    out = run(d)
    assert out[0].route == "disaggregated" and len(two_ranks.prefills) == 1


def test_a_local_prefill_counts_as_queued_on_the_decode_worker_until_its_first_token() -> None:
    prefill = FakeWorker()
    decode = FakeWorker(chunks=[chunk([5]), chunk([6], done=True)])
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
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
        async for reply in original(call):
            yield reply

    decode.decode = watched  # type: ignore[method-assign]
    asyncio.run(go())
    assert seen == [3, 0, 0]


def test_a_client_gone_after_the_first_token_frees_both_workers() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5]), chunk([6]), chunk([7], done=True)])
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    assert [o.token_ids for o in run(d, take=2)] == [[42], [5]]
    assert decode.stream_closed  # the call is cancelled at once: the worker aborts
    assert prefill.aborted == []  # the decode worker read the KV already


@pytest.mark.parametrize("prompt", [PROMPT, PROMPT[:4]], ids=["disaggregated", "local"])
def test_a_client_gone_closes_the_worker_call_before_the_close_returns(prompt: list[int]) -> None:
    """At once, not when the event loop's finalizer gets to the generators in between:
    the worker aborts and frees the request's blocks while the client's close runs."""
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5]), chunk([6]), chunk([7], done=True)])
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})

    async def go() -> bool:
        stream = d.generate(GenerateRequest("r1", prompt, SamplingParams(max_tokens=4)))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        closed = decode.stream_closed
        await d.close()
        return closed

    assert asyncio.run(go())


def test_a_client_gone_before_the_decode_started_releases_the_held_blocks() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5], done=True)])
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    assert [o.token_ids for o in run(d, take=1)] == [[42]]
    assert decode.decodes == [] and prefill.aborted == ["r1"]
