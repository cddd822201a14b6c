"""The autoscaler's pure parts: what a worker can do (capacity.py), how many workers each
pool needs (sizing.py) and when a pool follows that need (pacing.py). Times are given by
hand; nothing sleeps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from services.autoscaler.capacity import Capacity, DecodeLine
from services.autoscaler.pacing import Pacing, PoolPacer
from services.autoscaler.signals import Observations, PoolLoad, read_pools, readings
from services.autoscaler.sizing import Bounds, Demand, Targets, demand, size
from services.pb.events_pb2 import WorkerRecord

DISAGG = {"prefill": Bounds(0, 8), "decode": Bounds(1, 8)}


def _cap(
    prefill_tok_s: float | None = 1000.0, base: float = 0.02, per_seq: float = 0.002
) -> Capacity:
    cap = Capacity()
    cap.prefill_tok_s = prefill_tok_s
    cap.decode = DecodeLine(base, per_seq)
    return cap


def _demand(tok_s: float = 0.0, requests: int = 0, used: int = 0, seqs: int = 64) -> Demand:
    return Demand(tok_s, requests, used, blocks_per_worker=512, max_num_seqs=seqs)


# ---- capacity ------------------------------------------------------------------------------
def test_prefill_speed_follows_readings_and_decode_line_is_fitted() -> None:
    cap = Capacity()
    cap.learn(Observations(prefill_tok_s={"prefill": [1000.0]}))
    cap.learn(Observations(prefill_tok_s={"prefill": [2000.0]}))
    assert cap.prefill_tok_s == pytest.approx(1300.0)  # 0.3 of the way to the new reading
    cap.learn(Observations(decode_steps={"decode": [(4.0, 0.028), (20.0, 0.060)]}))
    assert cap.decode is not None
    assert (cap.decode.base_s, cap.decode.per_seq_s) == pytest.approx((0.020, 0.002))


def test_prefill_speed_comes_from_prefill_workers_once_one_was_seen() -> None:
    cap = Capacity()
    cap.learn(Observations(prefill_tok_s={"decode": [500.0]}))  # mixed steps: slower
    assert cap.prefill_tok_s == 500.0
    cap.learn(Observations(prefill_tok_s={"prefill": [2000.0], "decode": [500.0]}))
    cap.learn(Observations(prefill_tok_s={"decode": [400.0]}))
    assert cap.prefill_tok_s == pytest.approx(500 + 0.3 * 1500)


def test_one_batch_size_seen_gives_a_line_through_it_half_fixed() -> None:
    cap = Capacity()
    cap.learn(Observations(decode_steps={"both": [(8.0, 0.040), (8.0, 0.040)]}))
    assert cap.decode is not None
    assert cap.decode.step_s(8) == pytest.approx(0.040)
    assert cap.decode.step_s(16) == pytest.approx(0.060)  # base 0.020 + 16 x 0.0025


# ---- sizing --------------------------------------------------------------------------------
def test_decode_pool_is_sized_to_the_itl_target() -> None:
    got = size(_demand(requests=100), _cap(), Targets(itl_s=0.1), DISAGG)
    # 100 requests: 2 workers step in 0.12 s, 3 in 0.087
    assert got is not None and got.replicas == {"prefill": 0, "decode": 3}
    assert got.itl_s == pytest.approx(0.02 + 0.002 * 100 / 3)


def test_both_pools_are_chosen_together() -> None:
    # 3,000 prompt tokens/s at 1,000 a worker (80% busy at most): (3, 1) and (2, 2) both
    # take 4 workers; (3, 1) decodes faster. A tighter ITL makes a fifth worker a prefill one.
    got = size(_demand(3000.0, requests=2), _cap(), Targets(itl_s=0.1), DISAGG)
    assert got is not None and got.replicas == {"prefill": 3, "decode": 1}
    assert got.itl_s == pytest.approx(0.024 / (1 - 0.6))  # 600 tok/s left to the decode worker
    tight = size(_demand(3000.0, requests=2), _cap(), Targets(itl_s=0.05), DISAGG)
    assert tight is not None and tight.replicas == {"prefill": 4, "decode": 1}


def test_no_prefill_worker_is_kept_for_short_prompts_the_decode_workers_prefill_anyway() -> None:
    # 300 prompt tokens/s beside 20 requests decoding on at most 2 decode workers (ITL
    # target 0.045 s): on 2 a step of 0.04 s / (1 - 300 / 2,000) = 0.047 s, and a prefill
    # worker taking the prompts would make it 0.04 s: (1, 2)
    load, bounds = _demand(300.0, requests=20), {**DISAGG, "decode": Bounds(1, 2)}
    keeps = size(load, _cap(), Targets(itl_s=0.045), bounds)
    assert keeps is not None and keeps.replicas == {"prefill": 1, "decode": 2}
    # ... but where the routers count them all as short prompts (no prefill worker gets
    # one), that worker would take nothing and the target is out of reach either way
    short = size(replace(load, local_share=1.0), _cap(), Targets(itl_s=0.045), bounds)
    assert short is not None and short.replicas == {"prefill": 0, "decode": 2}
    assert "cannot be met" in short.reason and "300/s of them local" in short.reason
    # half of them short: 150 tok/s for a prefill worker, 0.04 / (1 - 150 / 2,000) = 0.043
    half = size(replace(load, local_share=0.5), _cap(), Targets(itl_s=0.045), bounds)
    assert half is not None and half.replicas == {"prefill": 1, "decode": 2}
    assert half.itl_s == pytest.approx(0.04 / (1 - 150 / 2000))


def test_a_trickle_of_prompts_needs_no_prefill_worker() -> None:
    got = size(_demand(100.0, requests=4), _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas == {"prefill": 0, "decode": 1}
    # the floor is the operator's: min 1 keeps one
    floor = {**DISAGG, "prefill": Bounds(1, 8)}
    assert size(_demand(100.0, requests=4), _cap(), Targets(), floor).replicas["prefill"] == 1  # type: ignore[union-attr]


def test_kv_blocks_and_batch_slots_bound_the_decode_pool() -> None:
    # 900 blocks in use, 512 a worker, 80% at most: 3 workers, though ITL needs 1
    got = size(_demand(requests=4, used=900), _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas["decode"] == 3
    # 40 requests and 16 slots a worker: 3 workers
    got = size(_demand(requests=40, seqs=16), _cap(per_seq=0.0001), Targets(), DISAGG)
    assert got is not None and got.replicas["decode"] == 3


def test_each_worker_keeps_room_for_a_p90_request() -> None:
    # 600 blocks in use: 2 workers hold 300 each, under 80% of 512 (409.6); a p90 request
    # of 150 blocks besides does not fit on 2 (450), and does on 3 (350)
    long_tail = replace(_demand(requests=4, used=600), tail_blocks=150)
    got = size(long_tail, _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas["decode"] == 3 and "a p90 request's 150" in got.reason
    assert size(_demand(requests=4, used=600), _cap(), Targets(), DISAGG).replicas["decode"] == 2  # type: ignore[union-attr]
    # one that no worker could hold at the target is not a reason to grow
    huge = replace(_demand(requests=4, used=600), tail_blocks=450)
    assert size(huge, _cap(), Targets(), DISAGG).replicas["decode"] == 2  # type: ignore[union-attr]


def test_the_pools_p90_lengths_are_their_workers_greatest() -> None:
    def record(
        wid: str, role: str, prompt_p90: int, output_p90: int, running: int = 0
    ) -> WorkerRecord:
        return WorkerRecord(
            worker_id=wid, role=role, block_size=16, num_blocks=512,
            prompt_tokens_p90=prompt_p90, output_tokens_p90=output_p90,
            running_output_tokens_p90=running,
        )  # fmt: skip

    now = readings(
        [
            record("p-0", "prefill", 3000, 1),
            record("d-0", "decode", 200, 100, running=300),
            record("d-1", "decode", 100, 500, running=20),
        ]
    )
    loads, _, _ = read_pools({}, now)
    assert (loads["decode"].prompt_p90, loads["decode"].output_p90) == (200, 500)
    assert loads["decode"].running_output_p90 == 300
    assert loads["decode"].answers_at_limit == 0.0  # no worker says
    said = [record("d-0", "decode", 200, 100), record("d-1", "decode", 100, 500)]
    said[0].answers_at_limit, said[1].answers_at_limit = 1.0, 0.5
    fresh = record("d-2", "decode", 0, 0)  # finished nothing yet: it says nothing
    mixed, _, _ = read_pools({}, readings([*said, fresh]))
    assert mixed["decode"].answers_at_limit == 0.5  # the least of those that know
    assert demand(mixed, "decode", Targets()).answers_at_limit == 0.5
    # the prompts' tail from every pool (the prefill pool sees them whole), the outputs'
    # from the serving pool: (3000 + 500) / 16 blocks
    assert demand(loads, "decode", Targets()).tail_blocks == 219
    # answers running now that are already longer than the finished ones' p90 count
    longer = readings([record("d-0", "decode", 200, 100, running=900)])
    loads, _, _ = read_pools({}, longer)
    assert demand(loads, "decode", Targets()).tail_blocks == math.ceil((200 + 900) / 16)


def test_reads_faster_than_the_heartbeat_see_a_steady_rate() -> None:
    """Heartbeats each second, reads every half second: the rate is measured between the
    heartbeats' stamps, and a record read again before its next heartbeat keeps its last
    rate (it read 0, then twice the rate, before)."""

    def record(beat: int) -> WorkerRecord:  # 1,000 prompt tokens a second, a beat a second
        return WorkerRecord(
            worker_id="p-0", role="prefill", block_size=16, num_blocks=512,
            started_at_unix_ms=1, heartbeat_unix_ms=1000 * beat,
            prefill_tokens_total=1000 * beat, prefill_busy_us_total=500_000 * beat,
        )  # fmt: skip

    last = read_pools({}, readings([record(0)]))[2]
    rates = []
    for beat in (1, 1, 2, 2, 3, 3):  # the record as read at t = 0.5, 1.0, 1.5, ...
        loads, obs, last = read_pools(last, readings([record(beat)]))
        rates.append(loads["prefill"].prefill_tokens_per_s)
        assert obs.prefill_tok_s in ({}, {"prefill": [2000.0]})  # per busy second, when new
    assert rates == [1000.0] * 6


def test_no_load_is_the_floor_and_unmeasured_speeds_hold() -> None:
    got = size(_demand(), Capacity(), Targets(), DISAGG)
    assert got is not None and got.replicas == {"prefill": 0, "decode": 1}
    assert size(_demand(500.0), _cap(prefill_tok_s=None), Targets(), DISAGG) is None
    assert size(_demand(requests=3), Capacity(), Targets(), DISAGG) is None


def test_targets_out_of_reach_put_the_decode_pool_at_its_max() -> None:
    got = size(_demand(requests=1000), _cap(), Targets(itl_s=0.01), DISAGG)
    assert got is not None and got.replicas == {"prefill": 0, "decode": 8}
    assert "cannot be met" in got.reason


def test_prompt_work_out_of_reach_grows_the_decode_pool_only_where_it_takes_prompts() -> None:
    # 20,000 prompt tokens/s against 8 prefill workers of 1,000 (800 at the utilization
    # target): out of reach; 4 requests decoding are one decode worker's load
    small = {"prefill": Bounds(0, 8), "decode": Bounds(1, 3)}
    flood = _demand(20_000.0, requests=4)
    balanced = size(flood, _cap(), Targets(), small)
    assert balanced is not None and balanced.replicas == {"prefill": 8, "decode": 3}
    assert "cannot be met" in balanced.reason  # decode workers would take prompts too
    alone = size(replace(flood, decode_prefills=False), _cap(), Targets(), small)
    assert alone is not None and alone.replicas == {"prefill": 8, "decode": 1}
    # the same 20,000 as 2,000 tok/s arriving and a backlog to clear: the prefill pool
    # grows for it all, the decode pool not for the backlog (gone before a worker starts)
    backlog = size(replace(flood, backlog_tok_s=18_000.0), _cap(), Targets(), small)
    assert backlog is not None and backlog.replicas == {"prefill": 8, "decode": 1}
    # where the routers count what arrives, that is what goes on (the tokens computed a
    # second while a backlog drains are the pools' speed)
    for arriving, decode in ((2_000.0, 1), (20_000.0, 3)):
        got = size(replace(flood, arriving_tok_s=arriving), _cap(), Targets(), small)
        assert got is not None and got.replicas == {"prefill": 8, "decode": decode}
    # and what decoding alone needs where it needs more: 60 requests, a step of 0.02 s +
    # 0.002 s a sequence, are 0.14 s on one worker and 0.08 s on two (target 0.1 s)
    busy = replace(flood, requests=60, decode_prefills=False)
    got = size(busy, _cap(), Targets(), small)
    assert got is not None and got.replicas == {"prefill": 8, "decode": 2}
    # the prefill pool still takes the prompt work: 2,000 tok/s at 800 a worker
    got = size(_demand(2000.0, requests=1000), _cap(), Targets(itl_s=0.01), DISAGG)
    assert got is not None and got.replicas == {"prefill": 3, "decode": 8}


@pytest.mark.parametrize(("start_s", "decode"), [(0.0, 3), (2.0, 3), (3.0, 2), (8.0, 1)])
def test_a_backlog_gone_before_a_decode_worker_starts_grows_only_the_prefill_pool(
    start_s: float, decode: int
) -> None:
    # 1,600 prompt tokens/s computed and 3,200 queued (1,600/s over the 2 s TTFT target)
    # beside at most 2 prefill workers of 1,000 (800 at the utilization target): the decode
    # workers take the other 1,600/s, on 3 of them. A decode worker that starts in 3 s
    # serves when a third of the backlog is left to clear over the TTFT target (2 enough);
    # in 8 s, a quarter (1). Within the TTFT target (2 s) nothing changes; the prefill pool
    # is sized on the whole backlog throughout.
    bounds = {"prefill": Bounds(0, 2), "decode": Bounds(1, 8)}
    need = replace(_demand(3200.0, requests=10), backlog_tok_s=1600.0, start_s=start_s)
    got = size(need, _cap(), Targets(), bounds)
    assert got is not None and got.replicas == {"prefill": 2, "decode": decode}
    assert got.itl_s is not None and got.itl_s <= Targets().itl_s
    assert ("a decode worker starts in" in got.reason) == (start_s > 0)


@pytest.mark.parametrize(
    ("tok_s", "balanced", "alone"),
    [
        (200.0, 0, 1),  # a quarter of a worker: stays with 8 decode workers (3% of a step)
        (500.0, 1, 1),  # from half a worker on, a prefill worker takes it
        (1500.0, 2, 2),  # 1.9 workers' worth
        (1900.0, 2, 3),  # 2.4: the rest with the decode workers, where they take prompts
    ],
)
def test_out_of_reach_prefill_pool_takes_whole_workers_of_prompt_work(
    tok_s: float, balanced: int, alone: int
) -> None:
    """Decode pool at its max, targets missed: prompt work at 800 tok/s a prefill worker
    (1,000 at the 0.8 utilization target)."""
    busy = _demand(tok_s, requests=1000)
    for prefills, want in ((True, balanced), (False, alone)):
        got = size(replace(busy, decode_prefills=prefills), _cap(), Targets(itl_s=0.01), DISAGG)
        assert got is not None and got.replicas["prefill"] == want, (prefills, got.replicas)
        assert got.replicas["decode"] == 8 and "cannot be met" in got.reason
        # short prompts all: nothing a prefill worker would get
        short = replace(busy, decode_prefills=prefills, local_share=1.0)
        got = size(short, _cap(), Targets(itl_s=0.01), DISAGG)
        assert got is not None and got.replicas == {"prefill": 0, "decode": 8}


def test_a_colocated_pool_takes_prefill_and_decode_time_both() -> None:
    bounds = {"both": Bounds(1, 8)}
    # 1,500 tok/s: at n workers each spends 1.5/n of its time prefilling (<= 0.8: n >= 2);
    # ITL at 2: step(10) / (1 - 0.75) = 0.16 > 0.1; at 3: 0.0333 / 0.5 = 0.067
    got = size(_demand(1500.0, requests=20), _cap(), Targets(itl_s=0.1), bounds)
    assert got is not None and got.replicas == {"both": 3}


def test_eased_targets_are_tighter() -> None:
    t = Targets(ttft_s=2.0, itl_s=0.1, kv_usage=0.8, utilization=0.8).eased(0.1)
    assert (t.ttft_s, t.itl_s, t.kv_usage, t.utilization) == pytest.approx((1.8, 0.09, 0.72, 0.72))
    with pytest.raises(ValueError):
        Targets(itl_s=0)
    with pytest.raises(ValueError):
        Bounds(3, 2)


# ---- pacing --------------------------------------------------------------------------------
PACE = Pacing(stable_window_s=60, panic_window_s=6, up_cooldown_s=15, down_cooldown_s=120)


def test_up_waits_out_the_panic_window_then_adds_four_or_doubles_at_most() -> None:
    pacer = PoolPacer(Bounds(1, 40), PACE, now=0.0)
    assert pacer.step(0.0, 2, up=30, down=30, idle=False).desired == 2  # one reading: not yet
    assert pacer.step(3.0, 2, up=30, down=30, idle=False).desired == 2
    step = pacer.step(6.0, 2, up=30, down=30, idle=False)
    assert (step.desired, step.direction) == (6, "up")  # +4 a step (x2 would be 4)
    assert pacer.step(10.0, 6, up=30, down=30, idle=False).reason.endswith("up cooldown")
    assert pacer.step(21.0, 6, up=30, down=30, idle=False).desired == 12  # x2 (+4 would be 10)
    assert pacer.step(36.0, 12, up=30, down=30, idle=False).desired == 24
    assert pacer.step(51.0, 24, up=30, down=30, idle=False).desired == 30  # what is needed


def test_no_step_while_workers_asked_for_are_starting() -> None:
    pacer = PoolPacer(Bounds(1, 10), PACE, now=0.0)
    pacer.step(0.0, 2, up=7, down=7, idle=False)
    step = pacer.step(6.0, 4, up=7, down=7, idle=False, starting=2)
    assert (step.desired, step.reason) == (4, "hold: 2 worker(s) starting")
    assert pacer.step(7.0, 4, up=7, down=7, idle=False).desired == 7  # they came: on we go


def test_no_shrinking_while_another_pools_workers_are_starting() -> None:
    # the decode pool does the prompts of a prefill pool coming back from zero: the sizing
    # that says it may shrink counts on prefill workers that do not serve yet
    pacer = PoolPacer(Bounds(1, 10), PACE, now=0.0)
    for t in range(0, 60, 5):
        pacer.step(float(t), 3, up=2, down=2, idle=False)
    step = pacer.step(60.0, 3, up=2, down=2, idle=False, others_starting=True)
    assert (step.desired, step.reason) == (3, "hold: another pool's workers are starting")
    assert pacer.step(61.0, 3, up=5, down=5, idle=False, others_starting=True).desired == 3
    assert pacer.step(67.0, 3, up=5, down=5, idle=False, others_starting=True).desired == 5
    assert pacer.step(200.0, 5, up=2, down=2, idle=False).desired == 4  # they serve: on


def test_a_spike_shorter_than_the_panic_window_moves_nothing() -> None:
    pacer = PoolPacer(Bounds(1, 10), PACE, now=0.0)
    for t, need in ((0.0, 2), (2.0, 2), (4.0, 9), (6.0, 9), (8.0, 2)):
        assert pacer.step(t, 2, up=need, down=need, idle=False).desired == 2


def test_down_needs_the_whole_stable_window_and_goes_one_at_a_time() -> None:
    pacer = PoolPacer(Bounds(1, 10), PACE, now=0.0)
    for t in range(0, 60, 5):
        assert pacer.step(float(t), 5, up=2, down=2, idle=False).desired == 5
    step = pacer.step(60.0, 5, up=2, down=2, idle=False)
    assert (step.desired, step.direction) == (4, "down")
    assert pacer.step(100.0, 4, up=2, down=2, idle=False).reason.endswith("down cooldown")
    assert pacer.step(180.0, 4, up=2, down=2, idle=False).desired == 3
    # one reading in the window that needed 4 at the eased targets keeps all 3
    pacer.step(290.0, 3, up=2, down=4, idle=False)
    step = pacer.step(300.0, 3, up=2, down=2, idle=False)  # the cooldown is over
    assert (step.desired, step.direction) == (3, "hold")
    assert pacer.step(351.0, 3, up=2, down=2, idle=False).desired == 2  # it left the window


def test_a_stable_window_without_load_goes_to_the_floor_at_once() -> None:
    pacer = PoolPacer(Bounds(0, 10), PACE, now=0.0)
    for t in range(0, 60, 5):
        pacer.step(float(t), 6, up=0, down=0, idle=True)
    step = pacer.step(60.0, 6, up=0, down=0, idle=True)
    assert (step.desired, step.direction) == (0, "down")


def test_a_size_outside_the_bounds_is_brought_inside() -> None:
    pacer = PoolPacer(Bounds(1, 4), PACE, now=0.0)
    assert pacer.step(0.0, 6, up=6, down=6, idle=False).desired == 4
    assert pacer.step(0.0, 0, up=0, down=0, idle=True).desired == 1


def test_a_requests_lifetime_is_its_ttft_then_its_p90_output_at_the_itl_target() -> None:
    load = PoolLoad("decode", 2, 4, 0, 0.0, 10, 100, 64, 16, 256, 200)
    d = demand({"decode": load}, "decode", Targets(ttft_s=1.0, itl_s=0.05))
    assert d.lifetime_s == pytest.approx(1.0 + 200 * 0.05)
    # the requests running have output 300 tokens so far: they live at least that long
    running = replace(load, running_output_p90=300)
    d = demand({"decode": running}, "decode", Targets(ttft_s=1.0, itl_s=0.05))
    assert d.lifetime_s == pytest.approx(1.0 + 300 * 0.05)
