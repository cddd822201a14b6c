"""The routing policy: costs, near-tie spreading, the cache-blind modes, predicted blocks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from services.kv.index import KVIndex
from services.pb.events_pb2 import BlockStored, KVEvent, WorkerRecord
from services.router.routing import CostWeights, Policy, Predicted
from services.router.workers import WorkerRef

BS = 16


def ref(worker_id: str, role: str = "prefill", **load: Any) -> WorkerRef:
    record = WorkerRecord(worker_id=worker_id, role=role, block_size=BS, **load)
    return WorkerRef(record, client=None)  # type: ignore[arg-type]  # never dialled


def store(index: KVIndex, worker_id: str, hashes: list[int]) -> None:
    index.apply(
        worker_id,
        [KVEvent(seq=i + 1, stored=BlockStored(block_hash=h)) for i, h in enumerate(hashes)],
    )


HASHES = list(range(1, 65))  # a 1,024-token prompt's 64 blocks
PROMPT_LEN = 64 * BS


def test_kv_sends_a_prompt_where_its_prefix_is() -> None:
    index = KVIndex()
    store(index, "p-1", HASHES[:48])
    store(index, "p-2", HASHES[:8])
    workers = [ref("p-0"), ref("p-1"), ref("p-2")]
    choice = Policy("kv", index, seed=0).pick("prefill", workers, HASHES, PROMPT_LEN)
    assert choice is not None
    assert (choice.worker.worker_id, choice.cached_blocks) == ("p-1", 48)
    assert choice.cost == PROMPT_LEN - 48 * BS


def test_queued_work_outweighs_a_small_prefix_hit() -> None:
    index = KVIndex()
    store(index, "p-1", HASHES[:8])  # 128 tokens cached...
    workers = [ref("p-0"), ref("p-1", queued_prefill_tokens=4000)]  # ...behind 4,000 queued
    choice = Policy("kv", index, seed=0).pick("prefill", workers, HASHES, PROMPT_LEN)
    assert choice is not None and choice.worker.worker_id == "p-0"


def test_the_router_own_in_flight_tokens_count_before_a_heartbeat_reports_them() -> None:
    workers = [ref("p-0"), ref("p-1")]
    workers[0].in_flight_tokens = 5000
    choice = Policy("least-loaded", None, seed=0).pick("prefill", workers, [], PROMPT_LEN)
    assert choice is not None and choice.worker.worker_id == "p-1"


def test_near_ties_spread_instead_of_herding() -> None:
    index = KVIndex()
    workers = [ref(f"p-{i}") for i in range(4)]
    for w in workers:
        store(index, w.worker_id, HASHES)  # a system prompt every worker holds
    policy = Policy("kv", index, seed=1)
    picks = Counter()
    for _ in range(400):
        choice = policy.pick("prefill", workers, HASHES, PROMPT_LEN)
        assert choice is not None
        picks[choice.worker.worker_id] += 1
    assert set(picks) == {w.worker_id for w in workers}
    assert max(picks.values()) < 2 * min(picks.values())


def test_ties_go_to_the_worker_with_fewest_requests_in_flight() -> None:
    workers = [ref("p-0"), ref("p-1"), ref("p-2")]
    workers[0].in_flight, workers[2].in_flight = 3, 1
    policy = Policy("least-loaded", None, seed=0)
    for _ in range(20):
        choice = policy.pick("prefill", workers, [], PROMPT_LEN)
        assert choice is not None and choice.worker.worker_id == "p-1"


def test_least_loaded_is_blind_to_the_cache() -> None:
    policy = Policy("least-loaded", KVIndex(), seed=0)
    assert not policy.uses_cache
    workers = [ref("p-0", queued_prefill_tokens=10), ref("p-1")]
    choice = policy.pick("prefill", workers, HASHES, PROMPT_LEN)
    assert choice is not None
    assert (choice.worker.worker_id, choice.cached_blocks) == ("p-1", 0)


def test_round_robin_takes_turns_in_order_and_random_covers_all() -> None:
    workers = [ref(f"p-{i}") for i in range(3)]
    rr = Policy("round-robin", None)
    order = [rr.pick("prefill", workers, [], 10) for _ in range(6)]
    assert [c.worker.worker_id for c in order if c] == ["p-0", "p-1", "p-2"] * 2
    rnd = Policy("random", None, seed=3)
    seen = {
        c.worker.worker_id for c in (rnd.pick("prefill", workers, [], 10) for _ in range(60)) if c
    }
    assert seen == {"p-0", "p-1", "p-2"}


def test_decode_cost_weighs_running_requests_and_kv_usage() -> None:
    w = CostWeights()
    busy = ref("d-0", role="decode", running=4, used_blocks=100)
    idle = ref("d-1", role="decode")
    choice = Policy("kv", KVIndex(), seed=0).pick("decode", [busy, idle], HASHES, PROMPT_LEN)
    assert choice is not None and choice.worker.worker_id == "d-1"
    assert choice.cost == pytest.approx(w.read * PROMPT_LEN)


def test_predicted_blocks_count_until_they_expire() -> None:
    predicted = Predicted(ttl_s=60)
    predicted.add("p-0", HASHES[:10])
    assert predicted.leading("p-0", HASHES) == 10
    assert predicted.leading("p-1", HASHES) == 0
    predicted.add("p-1", HASHES[:4], ttl_s=-1)  # already expired
    assert predicted.leading("p-1", HASHES) == 0
    predicted.forget("p-0")
    assert predicted.leading("p-0", HASHES) == 0


def test_a_burst_sharing_a_prefix_follows_the_first_prompt_it_routed() -> None:
    index = KVIndex()  # nothing announced yet: the first prefill has not finished
    workers = [ref(f"p-{i}") for i in range(4)]
    policy = Policy("kv", index, seed=0)
    first = policy.pick("prefill", workers, HASHES, PROMPT_LEN)
    assert first is not None
    policy.routed(first, HASHES)
    again = policy.pick("prefill", workers, HASHES, PROMPT_LEN)
    assert again is not None
    assert (again.worker, again.cached_blocks) == (first.worker, 64)


def test_bad_routing_names_are_refused() -> None:
    with pytest.raises(ValueError, match="--routing must be one of"):
        Policy("sticky", None)
    with pytest.raises(ValueError, match="needs a KV index"):
        Policy("kv", None)


def test_a_prompt_stays_with_its_prefix_unless_the_queue_costs_more_than_the_waste() -> None:
    index = KVIndex()
    store(index, "p-1", HASHES[:62])  # holds 992 of the 1,024 tokens
    holder_busy = ref("p-1", queued_prefill_tokens=1500)
    # Waiting 1,500 tokens beats recomputing 992 held tokens elsewhere (1,024 + 992 waste)...
    choice = Policy("kv", index, seed=0).pick(
        "prefill", [ref("p-0"), holder_busy], HASHES, PROMPT_LEN
    )
    assert choice is not None and choice.worker.worker_id == "p-1"
    # ...but not waiting 2,500.
    holder_busier = ref("p-1", queued_prefill_tokens=2500)
    choice = Policy("kv", index, seed=0).pick(
        "prefill", [ref("p-0"), holder_busier], HASHES, PROMPT_LEN
    )
    assert choice is not None and choice.worker.worker_id == "p-0"
    assert choice.cost == PROMPT_LEN + 992
