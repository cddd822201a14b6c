"""A prefill -> decode hand-off in one process: two mock engines, their KV caches joined by
the in-process transfer, driven by the same KVSource / KVSink a worker runs. Reads are
polled between steps: a slow, hung or late one never stops the other requests, and its
blocks are never reused while it may still write them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.config import MockTiming
from engine.transfer.exchange import EXPIRY_MARGIN_S, KVHandle, KVSink, KVSource
from engine.transfer.leases import LeaseTable
from engine.transfer.local import LocalFabric, LocalKVTransfer
from tests.helpers.engine_steps import drain as _drain
from tests.helpers.mock_model import write_config_only

BS = 16
PROMPT = list(range(50, 95))  # 45 tokens: 3 blocks, the last partial
PARAMS = SamplingParams(max_tokens=12)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A config.json and no weights: all the mock backend reads."""
    return write_config_only(tmp_path)


def _engine(model: Path, role: str) -> Engine:
    cfg = EngineConfig(
        model=str(model),
        role=role,  # type: ignore[arg-type]
        backend="mock",
        cache=CacheConfig(block_size=BS, num_blocks=64),
        mock=MockTiming(speed=1000.0),
    )
    return Engine(cfg, load_tokenizer_files=False)


def _pair(model: Path, leases: LeaseTable | None = None) -> tuple[Engine, KVSource, Engine, KVSink]:
    fabric = LocalFabric()
    prefill, decode = _engine(model, "prefill"), _engine(model, "decode")
    source = KVSource(
        prefill,
        LocalKVTransfer("p", prefill.runner.kv_cache, fabric),
        "p",
        leases if leases is not None else LeaseTable(30.0),  # (an empty table is falsy)
    )
    sink = KVSink(decode, LocalKVTransfer("d", decode.runner.kv_cache, fabric))
    return prefill, source, decode, sink


def _hand_off(prefill: Engine, source: KVSource, decode: Engine, sink: KVSink) -> int:
    """Prefill the prompt, admit it on the decode side and let the sink read its KV."""
    prefill.add_request("r", PROMPT, PARAMS)
    (out,) = prefill.step()
    assert out.held and out.finish_reason is None and not prefill.has_unfinished()
    handle = source.hold("r")
    assert handle.num_tokens == len(PROMPT) and len(handle.block_ids) == 3
    decode.add_request("r", PROMPT, PARAMS, remote_prefill=True)
    assert decode.step() == []  # admitted: blocks allocated, waiting for the KV
    assert decode.awaiting_kv("r") is not None
    sink.expect("r", handle, out.new_token_ids[0])
    assert sink.tick() == []  # the first token does not end it
    assert decode.awaiting_kv("r") is None
    return out.new_token_ids[0]


def test_hand_off_through_the_in_process_transfer(model: Path) -> None:
    (colocated,) = _engine(model, "both").generate([PROMPT], PARAMS)
    prefill, source, decode, sink = _pair(model)
    first = _hand_off(prefill, source, decode, sink)
    report = sink.reports.pop("r")
    assert not report.recomputed and report.bytes_read > 0
    assert sink.num_reads == 1 and sink.num_recomputed == 0
    # The reader's note reaches the prefill side, which frees the held blocks.
    assert prefill.load().held_blocks == 3
    source.tick()
    assert prefill.held_request("r") is None and len(source.leases) == 0
    assert prefill.load().idle
    assert [first, *_drain(decode)] == colocated.token_ids
    assert decode.load().idle
    decode.check_integrity()


def test_a_held_prompt_is_leased_in_its_steps_wake_and_its_handle_taken_once(model: Path) -> None:
    prefill, source, _, _ = _pair(model)
    prefill.add_request("r", PROMPT, PARAMS)
    prefill.add_request("done", PROMPT[:5], SamplingParams(max_tokens=1))
    outs = prefill.step()
    source.lease_held(outs)  # what the worker's engine thread runs after each step
    assert {o.request_id: o.held for o in outs} == {"r": True, "done": False}
    assert len(source.leases) == 1  # the held one only
    handle = source.take("r")
    assert handle is not None and handle.num_tokens == len(PROMPT)
    assert handle.block_ids == tuple(prefill.held_request("r").block_ids)  # type: ignore[union-attr]
    assert source.take("r") is None and source.take("done") is None


def test_a_leased_prompt_dropped_before_its_handle_was_taken_leaves_nothing(model: Path) -> None:
    prefill, source, _, _ = _pair(model)
    prefill.add_request("r", PROMPT, PARAMS)
    source.lease_held(prefill.step())
    assert source.drop("r")  # its caller went away between the step and the take
    assert source.take("r") is None and len(source.leases) == 0
    assert prefill.held_request("r") is None and prefill.load().idle


def test_failed_read_is_recomputed_and_the_lease_expires(model: Path) -> None:
    (colocated,) = _engine(model, "both").generate([PROMPT], PARAMS)
    clock = [time.monotonic()]
    prefill, source, decode, sink = _pair(model, LeaseTable(30.0, clock=lambda: clock[0]))
    assert isinstance(sink.transfer, LocalKVTransfer)
    sink.transfer.fail_reads = True
    first = _hand_off(prefill, source, decode, sink)
    assert sink.reports.pop("r").recomputed and sink.num_recomputed == 1
    assert [first, *_drain(decode)] == colocated.token_ids  # recomputed here, same tokens
    source.tick()
    assert prefill.held_request("r") is not None  # no note came: held until the lease ends
    clock[0] += 31.0
    source.tick()
    assert prefill.held_request("r") is None and prefill.load().idle
    assert source.leases.num_expired == 1


def test_a_first_token_that_ends_the_request_finishes_it_on_arrival(model: Path) -> None:
    """remote_kv_ready applies the same stop rules as a step: here max_tokens=1 is met by
    the prefill worker's token, which the client already has, so nothing is repeated."""
    prefill, source, decode, sink = _pair(model)
    prefill.add_request("r", PROMPT, PARAMS)
    (first,) = prefill.step()
    handle = source.hold("r")
    snap = prefill.kv_snapshot()
    assert snap.seq == 2 and len(snap.block_hashes) == 2  # the prompt's two full blocks
    decode.add_request("r", PROMPT, SamplingParams(max_tokens=1), remote_prefill=True)
    assert decode.step() == []
    sink.expect("r", handle, first.new_token_ids[0])
    (out,) = sink.tick()
    assert out.finished and out.finish_reason == "length"
    assert out.new_token_ids == [] and out.num_output_tokens == 1
    assert not decode.has_unfinished() and decode.load().idle
    source.tick()
    assert prefill.load().idle


def _local(sink: KVSink) -> LocalKVTransfer:
    assert isinstance(sink.transfer, LocalKVTransfer)
    return sink.transfer


def _admit(prefill: Engine, source: KVSource, decode: Engine) -> tuple[KVHandle, int]:
    """Prefill "r" and admit it on the decode side, its KV not read yet."""
    prefill.add_request("r", PROMPT, PARAMS)
    (out,) = prefill.step()
    decode.add_request("r", PROMPT, PARAMS, remote_prefill=True)
    assert decode.step() == []
    return source.hold("r"), out.new_token_ids[0]


def test_a_slow_read_does_not_stop_the_others(model: Path) -> None:
    (colocated,) = _engine(model, "both").generate([PROMPT], PARAMS)
    prefill, source, decode, sink = _pair(model)
    handle, first = _admit(prefill, source, decode)
    decode.add_request("other", list(range(10, 20)), PARAMS)  # prefilled here: no read
    _local(sink).read_polls = 3  # in flight for three ticks
    sink.expect("r", handle, first)
    for _ in range(3):
        assert sink.tick() == [] and sink.reading
        (other,) = decode.step()  # "other" steps on meanwhile; "r" waits for its KV
        assert other.request_id == "other" and decode.awaiting_kv("r") is not None
    assert sink.tick() == [] and not sink.reading
    assert not sink.reports.pop("r").recomputed and sink.num_reads == 1
    assert decode.abort("other")
    assert [first, *_drain(decode)] == colocated.token_ids
    decode.check_integrity()
    assert decode.load().idle


def test_a_read_is_due_once_its_request_is_admitted(model: Path) -> None:
    """The worker's loop comes back at once for it (services/worker/core.py _idle_wait)."""
    prefill, source, decode, sink = _pair(model)
    prefill.add_request("r", PROMPT, PARAMS)
    (out,) = prefill.step()
    decode.add_request("r", PROMPT, PARAMS, remote_prefill=True)
    sink.expect("r", source.hold("r"), out.new_token_ids[0])
    assert not sink.due  # not admitted yet: nothing to start
    assert decode.step() == []  # admitted, blocks allocated
    assert sink.due and not sink.reading  # the next tick starts its read
    assert sink.tick() == [] and sink.due == sink.reading
    _drain(decode)
    assert not sink.due and decode.load().idle


def test_a_hung_read_is_cancelled_at_its_deadline_and_recomputed(model: Path) -> None:
    (colocated,) = _engine(model, "both").generate([PROMPT], PARAMS)
    prefill, source, decode, sink = _pair(model)
    sink.timeout_s = 0.05
    handle, first = _admit(prefill, source, decode)
    _local(sink).read_polls = 10**9  # never ends by itself, but can be cancelled
    sink.expect("r", handle, first)
    assert sink.tick() == []
    time.sleep(0.06)
    assert sink.tick() == [] and not sink.reading
    assert sink.reports.pop("r").recomputed and sink.num_recomputed == 1
    assert [first, *_drain(decode)] == colocated.token_ids
    assert decode.load().idle


def test_blocks_of_a_read_that_cannot_be_stopped_wait_for_its_end(model: Path) -> None:
    prefill, source, decode, sink = _pair(model)
    handle, first = _admit(prefill, source, decode)
    transfer = _local(sink)
    transfer.hang_reads = True  # neither ends nor cancels: NIXL's worst case
    sink.expect("r", handle, first)
    sink.tick()
    blocks = list(decode.scheduler.remote["r"].block_ids)
    sink.forget("r")
    assert decode.abort("r")  # the request is gone...
    sink.tick()
    assert all(decode.pool.ref_counts[b] == 1 for b in blocks)  # ...its blocks are not
    assert not decode.load().idle and sink.reading
    transfer.hang_reads = False  # the read ends at last
    sink.tick()
    assert not sink.reading and decode.load().idle
    decode.check_integrity()


def test_a_lease_nearly_over_is_not_read(model: Path) -> None:
    (colocated,) = _engine(model, "both").generate([PROMPT], PARAMS)
    prefill, source, decode, sink = _pair(model)
    handle, first = _admit(prefill, source, decode)
    late = replace(handle, lease_deadline=time.monotonic() + EXPIRY_MARGIN_S / 2)
    sink.expect("r", late, first)
    assert sink.tick() == []
    assert sink.reports.pop("r").recomputed and sink.num_reads == 0
    assert [first, *_drain(decode)] == colocated.token_ids
