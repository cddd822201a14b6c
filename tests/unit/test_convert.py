"""Python objects survive the trip through protobuf bytes unchanged (services/wire/):
engine dataclasses, and every rpc's request and reply, the worker's side and the router's."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from engine.block_pool import BlockPool
from engine.kv_events import AllBlocksCleared, BlockStored, KVEvent
from engine.output import RequestOutput, StepTotals
from engine.request import FinishReason, StartTiming
from engine.sampling_params import GuidedSpec, SamplingParams
from engine.transfer.exchange import ReadReport
from services import wire
from services.pb import events_pb2, worker_pb2
from services.wire import event_from_pb, event_to_pb, params_from_pb, params_to_pb
from services.worker.results import DecodeUpdate
from services.worker.stats import WorkerStats
from tests.helpers.handles import assert_same_but_lease, handle

HANDLE = handle("prefill-0", "prefill-0-ab12", (4, 9, 2), 40, "lease-1")


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(
            max_tokens=7,
            temperature=0.5,
            top_k=3,
            top_p=0.75,
            seed=0,
            stop=("a", "b"),
            stop_token_ids=(2, 9),
            ignore_eos=True,
            min_tokens=2,
            logprobs=True,
        ),
        # logit changes: values a float32 holds exactly (the wire's type)
        SamplingParams(
            presence_penalty=-1.5,
            frequency_penalty=0.25,
            repetition_penalty=1.125,
            logit_bias={7: -100.0, 3: 2.5},
            min_p=0.0625,
            top_logprobs=20,
        ),
        SamplingParams(repetition_penalty=0.5),
        SamplingParams(guided=GuidedSpec("json_schema", '{"type": "object"}')),
        SamplingParams(guided=GuidedSpec("json_object")),
    ],
)
def test_params_round_trip(params: SamplingParams) -> None:
    wire = worker_pb2.SamplingParams.FromString(params_to_pb(params).SerializeToString())
    assert params_from_pb(wire) == params


def test_top_logprobs_round_trip() -> None:
    from services.wire.engine_types import top_from_pb, top_to_pb

    top = ((5, -0.25), (1, -1.5))
    wire = worker_pb2.TopLogprobs.FromString(top_to_pb(top).SerializeToString())
    assert top_from_pb(wire) == top


def test_seed_zero_is_not_no_seed() -> None:
    assert params_from_pb(params_to_pb(SamplingParams(seed=0))).seed == 0
    assert params_from_pb(params_to_pb(SamplingParams())).seed is None


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="top_p"):
        params_from_pb(worker_pb2.SamplingParams(max_tokens=4, top_p=0.0))


def test_pool_events_round_trip() -> None:
    seen: list[KVEvent] = []
    pool = BlockPool(4, on_event=seen.append)
    (a, b) = pool.allocate(2)
    pool.commit(a, 2**64 - 1, None, [1, 2])
    pool.commit(b, 5, 2**64 - 1, [3, 4])
    pool.release([a, b])
    pool.allocate(4)  # evicts both cached blocks
    pool.reset_cache()
    assert [type(e).__name__ for e in seen] == ["BlockStored"] * 2 + ["BlockRemoved"] * 2 + [
        "AllBlocksCleared"
    ]
    for event in seen:
        wire = events_pb2.KVEvent.FromString(event_to_pb("decode-0", event).SerializeToString())
        assert wire.worker_id == "decode-0"
        assert event_from_pb(wire) == event
    assert isinstance(seen[0], BlockStored) and seen[0].parent_hash is None
    assert isinstance(seen[-1], AllBlocksCleared)


def test_event_without_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="no kind"):
        event_from_pb(events_pb2.KVEvent(worker_id="w", seq=1))


def _bytes(msg):  # type: ignore[no-untyped-def]
    """What the other side gets: the message parsed back from its bytes."""
    return type(msg).FromString(msg.SerializeToString())


def test_prefill_call_round_trip_and_validation() -> None:
    call = wire.PrefillCall("r1", [1, 2, 3], SamplingParams(max_tokens=5, seed=3), "tenant")
    assert wire.PrefillCall.from_pb(_bytes(call.to_pb())) == call
    with pytest.raises(ValueError, match="request_id is required"):
        wire.PrefillCall.from_pb(worker_pb2.PrefillRequest(prompt_token_ids=[1]))


@pytest.mark.parametrize(
    "call",
    [
        wire.DecodeCall("r2", [5, 6], SamplingParams()),
        wire.DecodeCall("r3", [5, 6], SamplingParams(), HANDLE, first_token=0),
        wire.DecodeCall("r4", [5], SamplingParams(), generated_token_ids=[7, 8]),
        wire.DecodeCall("r5", [5], SamplingParams(), cache_salt="tenant"),
    ],
)
def test_decode_call_round_trip(call: wire.DecodeCall) -> None:
    """first_token 0 is a token, not "no first token"."""
    assert_same_but_lease(wire.DecodeCall.from_pb(_bytes(call.to_pb())), call)


def test_decode_call_with_a_handle_lacking_a_lease_is_rejected() -> None:
    msg = wire.DecodeCall("r", [1], SamplingParams(), HANDLE, 3).to_pb()
    msg.kv.lease_id = ""
    with pytest.raises(ValueError, match="lease id"):
        wire.DecodeCall.from_pb(msg)


@pytest.mark.parametrize(
    "sent",
    [
        wire.PrefillReply(7, -0.5, 16, None, HANDLE, start=StartTiming(0.25, 0.0, 1.5)),
        wire.PrefillReply(0, None, 0, FinishReason.STOP, None),  # ended by its first token
    ],
)
def test_a_prefill_reply_reaches_the_router_as_sent(sent: wire.PrefillReply) -> None:
    called_at = time.monotonic()
    reply = wire.PrefillReply.from_pb(_bytes(wire.prefill_reply_to_pb(sent)), called_at)
    assert_same_but_lease(reply, sent)


def test_a_lease_travels_as_time_left_counted_from_the_call() -> None:
    """No wall clock crosses hosts: the router counts the time left from when it called
    (the worker answered later, so the lease can only end later than the router thinks)."""
    fresh = replace(HANDLE, lease_deadline=time.monotonic() + 30.0)
    msg = _bytes(wire.prefill_reply_to_pb(wire.PrefillReply(7, None, 0, None, fresh)))
    assert 29_000 < msg.kv.lease_ms_left <= 30_000
    reply = wire.PrefillReply.from_pb(msg, called_at=time.monotonic() - 10.0)
    assert reply.handle is not None
    assert 18.9 < reply.handle.lease_deadline - time.monotonic() < 20.1
    gone = wire.handle_to_pb(replace(HANDLE, lease_deadline=time.monotonic() - 1))
    assert gone.lease_ms_left == 0  # already over: nothing left, not a negative number


def test_decode_update_reaches_the_router_as_a_reply() -> None:
    start = StartTiming(queue_s=0.125, kv_wait_s=0.5, compute_s=0.25)
    out = RequestOutput("r", [4, 5], True, FinishReason.LENGTH, 10, 8, 2, [-0.25, -1.0])
    out.start = start
    report = ReadReport(bytes_read=4096, seconds=0.5, recomputed=False)
    reply = wire.DecodeReply.from_pb(_bytes(wire.decode_update_to_pb(DecodeUpdate(out, report))))
    want = wire.DecodeReply([4, 5], [-0.25, -1.0], True, "length", 8, False, 4096, 0.5)
    assert reply == replace(want, start=start)
    running = RequestOutput("r", [3], False, None, 10, 0, 1)
    reply = wire.DecodeReply.from_pb(_bytes(wire.decode_update_to_pb(DecodeUpdate(running, None))))
    assert reply == wire.DecodeReply([3], [], False, None, 0)


def test_worker_stats_reach_the_router_as_a_reply() -> None:
    values = dict(zip(wire.StatsReply.__dataclass_fields__, range(1, 100), strict=False))
    values.update(idle=True, integrity_error="leak")
    stats = WorkerStats(**values, queued_prefill_tokens=99, totals=StepTotals())  # not on the wire
    assert wire.StatsReply.from_pb(_bytes(wire.stats_to_pb(stats))) == wire.StatsReply(**values)


def test_small_replies_round_trip() -> None:
    dump = wire.KVDump("decode-0", 2**41, 12, [2**64 - 1, 3], 16)
    assert wire.KVDump.from_pb(_bytes(dump.to_pb())) == dump
    health = wire.HealthReply(True, "decode-0", "decode")
    assert wire.HealthReply.from_pb(_bytes(health.to_pb())) == health
    assert wire.found_from_pb(_bytes(wire.found_to_pb(True))) is True
    assert _bytes(wire.abort_to_pb("r9")).request_id == "r9"
