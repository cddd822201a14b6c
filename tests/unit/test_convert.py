"""Engine dataclasses survive the trip through protobuf bytes unchanged."""

from __future__ import annotations

import pytest

from engine.block_pool import BlockPool
from engine.kv_events import AllBlocksCleared, BlockStored, KVEvent
from engine.sampling_params import SamplingParams
from services.pb import events_pb2, worker_pb2
from services.wire import event_from_pb, event_to_pb, params_from_pb, params_to_pb


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
    ],
)
def test_params_round_trip(params: SamplingParams) -> None:
    wire = worker_pb2.SamplingParams.FromString(params_to_pb(params).SerializeToString())
    assert params_from_pb(wire) == params


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
