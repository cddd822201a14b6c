"""The autoscaler's demand forecast: the arrival rate from the routers' counters
(arrival_rate.py), what it brings by Little's law (forecast.py), and the loop that sizes
each pool for the larger of the load of now and the forecast. Times are given by hand;
nothing sleeps."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from services.autoscaler.arrival_rate import ArrivalRate, Rates
from services.autoscaler.forecast import Forecast, arriving, forecast, sized
from services.autoscaler.loop import Autoscaler, Decision
from services.autoscaler.sizing import Bounds, Demand, Targets, size
from services.cluster.arrivals import ArrivalCount, Arrivals
from services.pb.events_pb2 import WorkerRecord
from tests.unit.test_autoscaler_loop import CONFIG, Sim
from tests.unit.test_autoscaler_policy import DISAGG, _cap


def _count(
    total: int,
    at_s: float,
    router: str = "r-0",
    started: int = 1,
    prompt: int = 100,
    asked: int | None = None,
    local: int | None = None,
) -> ArrivalCount:
    """`total` requests of `prompt` tokens each so far, having asked for `asked` output
    tokens in all, `local` of the prompt tokens short ones (None: a router that does not
    count them)."""
    at_ms = int(at_s * 1000)
    return ArrivalCount(router, total, total * prompt, started, at_ms, asked, local)


def _requests(rates: Rates | None) -> float | None:
    return None if rates is None else rates.requests


# ---- the arrival rate ----------------------------------------------------------------------
def test_the_rate_is_the_counters_change_over_the_window_summed_over_routers() -> None:
    rate = ArrivalRate(keep_s=10)
    rate.update([_count(0, 0.0)])
    assert _requests(rate.per_s(2)) is None  # one stamp: no rate yet
    for t in range(1, 11):  # r-0: 1 req/s for 6 s, then 5 req/s
        rate.update([_count(t if t <= 6 else 6 + 5 * (t - 6), float(t))])
    assert rate.per_s(2) == Rates(pytest.approx(5.0), pytest.approx(500.0), arrived=10)  # type: ignore[arg-type]
    assert _requests(rate.per_s(10)) == pytest.approx((26 - 0) / 10)
    assert _requests(rate.per_s(60)) == pytest.approx(2.6)  # the history kept is the window covered
    rate.update([_count(26, 10.0), _count(0, 10.0, "r-1")])  # r-0 not published since
    rate.update([_count(28, 11.0), _count(3, 11.0, "r-1")])
    assert _requests(rate.per_s(1)) == pytest.approx(2.0 + 3.0)


def test_the_panic_window_counts_for_what_it_is_sure_of_over_the_stable_window() -> None:
    """A Poisson count of k arrivals is k +- sqrt(k): up weighs one standard deviation
    under the panic window's count, never under the stable window's rate."""
    stable = Rates(4.0, 1000.0, 4.0 * 64, arrived=20)
    burst = Rates(7.0, 1750.0, 7.0 * 256, arrived=14)  # 14 in 2 s where ~8 are usual
    sure = burst.at_least(stable)
    k = 1 - 14**-0.5
    assert (sure.requests, sure.prompt_tokens) == pytest.approx((7.0 * k, 1750.0 * k))
    assert sure.asked_output == pytest.approx(256.0)  # the latest window's mean ask
    lull = Rates(1.0, 250.0, 1.0 * 256, arrived=2).at_least(stable)
    assert (lull.requests, lull.prompt_tokens) == (4.0, 1000.0)  # the stable window's
    assert lull.asked_output == pytest.approx(256.0)
    step = Rates(30.0, 3000.0, arrived=60).at_least(stable)  # a 7x step: 6.3x at once
    assert step.requests == pytest.approx(30.0 * (1 - 60**-0.5))
    assert step.max_output_tokens is None  # asks not counted stay not counted
    none = Rates(0.0, 0.0, arrived=0).at_least(None)
    assert (none.requests, none.prompt_tokens) == (0.0, 0.0)


def test_a_restarted_router_begins_again_and_a_lapsed_one_is_forgotten() -> None:
    rate = ArrivalRate(keep_s=10)
    rate.update([_count(100, 0.0), _count(0, 0.0, "r-1")])
    rate.update([_count(110, 1.0), _count(2, 1.0, "r-1")])
    rate.update([_count(3, 2.0, started=2), _count(4, 2.0, "r-1")])  # r-0 restarted
    assert _requests(rate.per_s(5)) == pytest.approx(2.0)  # r-0 has one stamp of its new life
    rate.update([_count(6, 3.0, "r-1")])  # r-0's key lapsed
    rate.update([_count(8, 4.0, "r-1")])
    assert _requests(rate.per_s(1)) == pytest.approx(2.0)
    assert ArrivalRate(keep_s=10).per_s(5) is None  # no routers: no figures


def test_the_outputs_asked_for_are_a_rate_only_where_every_router_counts_them() -> None:
    rate = ArrivalRate(keep_s=10)
    for t in range(3):  # r-0: 2 req/s asking 64 tokens each; r-1: 1 req/s asking 256
        rate.update(
            [_count(2 * t, float(t), asked=128 * t), _count(t, float(t), "r-1", asked=256 * t)]
        )
    got = rate.per_s(2)
    assert got is not None and got.max_output_tokens == pytest.approx(128 + 256)
    assert got.asked_output == pytest.approx((128 + 256) / 3)
    rate.update([_count(6, 3.0, asked=384), _count(3, 3.0, "r-2")])  # r-2 counts no asks
    rate.update([_count(8, 4.0, asked=512), _count(5, 4.0, "r-2")])
    got = rate.per_s(1)
    assert got is not None and got.max_output_tokens is None and got.asked_output is None
    assert got.requests == pytest.approx(2 + 2)


def test_short_prompts_are_a_share_only_where_every_router_counts_them() -> None:
    rate = ArrivalRate(keep_s=10)
    for t in range(3):  # r-0: 2 req/s of 100 tokens, 1 of them short; r-1: 1 req/s, long
        rate.update(
            [
                _count(2 * t, float(t), asked=0, local=100 * t),
                _count(t, float(t), "r-1", asked=0, local=0),
            ]
        )
    got = rate.per_s(2)
    assert got is not None and got.local_prompt_tokens == pytest.approx(100.0)
    assert got.local_share == pytest.approx(100 / 300)
    sure = got.at_least(None)  # up's: scaled with the rest, so the same share
    assert sure.local_share == pytest.approx(100 / 300)
    assert sure.local_prompt_tokens is not None and sure.local_prompt_tokens < 100
    rate.update([_count(6, 3.0, asked=0, local=300), _count(3, 3.0, "r-2", asked=0)])
    rate.update([_count(8, 4.0, asked=0, local=400), _count(5, 4.0, "r-2", asked=0)])
    got = rate.per_s(1)  # r-2 counts no short prompts: none counted at all
    assert got is not None and got.local_prompt_tokens is None and got.local_share == 0.0
    t = Targets(ttft_s=1.0, itl_s=0.05)
    assert arriving(NEED, Rates(3.0, 300.0, local_prompt_tokens=100.0), t).local_share == (
        pytest.approx(1 / 3)
    )
    assert arriving(NEED, Rates(3.0, 300.0), t).local_share == 0.0


def test_the_counts_go_through_redis_as_published() -> None:
    store = _FakeRedis()
    for count in (
        _count(42, 3.5, "abc", started=7),
        _count(42, 3.5, "abc", started=7, asked=900),
        _count(42, 3.5, "abc", started=7, asked=900, local=640),
    ):
        Arrivals(store).publish(count)  # type: ignore[arg-type]
        assert store.ttl_ms["tandem:arrivals:abc"] == 10_000
        assert Arrivals(store).read() == [count]  # type: ignore[arg-type]


# ---- the forecast --------------------------------------------------------------------------
NEED = Demand(0.0, 2, 0, blocks_per_worker=512, max_num_seqs=64, lifetime_s=11.0)


def _arriving(per_s: float, prompt: int = 1000) -> Rates:
    return Rates(per_s, per_s * prompt)


def test_littles_law_gives_the_requests_in_flight_and_the_prompt_work_is_as_counted() -> None:
    # 2 req/s living 11 s (TTFT 1 s, then 200 tokens at 50 ms): 22 in flight; 2,000 tok/s
    assert forecast(NEED, _arriving(2.0)) == Forecast(22, 2000.0)
    assert forecast(NEED, _arriving(0.01)) == Forecast(1, 10.0)  # a trickle: one
    assert forecast(NEED, Rates(0.0, 0.0)) is None and forecast(NEED, None) is None


def test_a_lifetime_is_never_longer_than_the_outputs_arriving_ask_for() -> None:
    """NEED's requests live 11 s (TTFT 1 s, then a p90 output of 200 tokens at 50 ms): a
    p90 of requests finished lately. An answer is never longer than its max_tokens, so
    arrivals asking for 40 on average live 1 + 40 x 0.05 s; asking for more bounds nothing."""
    t = Targets(ttft_s=1.0, itl_s=0.05)
    short = arriving(NEED, Rates(2.0, 2000.0, 2.0 * 40), t)
    assert short.lifetime_s == pytest.approx(3.0) and short.arriving_tok_s == 2000.0
    assert forecast(short, Rates(2.0, 2000.0, 80.0)) == Forecast(6, 2000.0)
    assert arriving(NEED, Rates(2.0, 2000.0, 2.0 * 1000), t).lifetime_s == 11.0
    assert arriving(NEED, Rates(2.0, 2000.0), t).lifetime_s == 11.0  # asks not counted
    assert arriving(NEED, Rates(0.0, 0.0, 0.0), t).lifetime_s == 11.0  # nothing arrived
    assert arriving(NEED, None, t) == NEED
    # where (nearly) every answer runs to its max_tokens, the asks are how long they answer,
    # longer than the finished ones' p90 too (a change to longer answers, seen at once)
    fixed = replace(NEED, answers_at_limit=0.95)
    assert arriving(fixed, Rates(2.0, 2000.0, 2.0 * 1000), t).lifetime_s == pytest.approx(51.0)
    assert arriving(fixed, Rates(2.0, 2000.0, 2.0 * 40), t).lifetime_s == pytest.approx(3.0)
    assert arriving(fixed, Rates(2.0, 2000.0), t).lifetime_s == 11.0  # asks not counted
    stopping = replace(NEED, answers_at_limit=0.5)  # half end at a stop: asks only bound
    assert arriving(stopping, Rates(2.0, 2000.0, 2.0 * 1000), t).lifetime_s == 11.0


def test_the_prompt_work_follows_the_prompts_arriving_now() -> None:
    """Prompts grow 100 -> 800 tokens at a steady 4 req/s: the prompt tokens/s of the
    panic window follow within it (a p90 of finished requests would lag by its history)."""
    rate = ArrivalRate(keep_s=10)
    requests = tokens = 0
    for t in range(13):
        requests, tokens = requests + 4, tokens + 4 * (100 if t < 10 else 800)
        rate.update([ArrivalCount("r-0", requests, tokens, 1, t * 1000)])
    assert rate.per_s(2) == Rates(4.0, 3200.0, arrived=8)
    ahead = forecast(NEED, rate.per_s(2))
    assert ahead is not None and ahead.prefill_tok_s == 3200.0


def test_a_rising_rate_grows_the_decode_pool_before_its_requests_do() -> None:
    need = NEED
    assert size(need, _cap(), Targets(), DISAGG).replicas == {"prefill": 0, "decode": 1}  # type: ignore[union-attr]
    # 10 req/s x 11 s = 110 in flight soon: 0.02 + 0.002 x 110 / n <= 0.1 at n >= 3
    got = sized(need, forecast(need, _arriving(10.0, prompt=0)), _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas == {"prefill": 0, "decode": 3}
    assert "the forecast needs prefill 0, decode 3" in got.reason
    # the rate's prompt work goes to the prefill pool: 4 x 1,000 tok/s at 800 a worker: 5
    # (and 44 in flight then take 2 decode workers)
    got = sized(NEED, forecast(NEED, _arriving(4.0)), _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas == {"prefill": 5, "decode": 2}


def test_the_forecast_only_adds_and_without_figures_changes_nothing() -> None:
    busy = replace(NEED, requests=300)  # the load of now needs more
    now = size(busy, _cap(), Targets(), DISAGG)
    assert sized(busy, forecast(busy, _arriving(1.0, prompt=0)), _cap(), Targets(), DISAGG) == now
    assert sized(busy, None, _cap(), Targets(), DISAGG) == now
    # a speed the forecast needs is not measured yet: the load of now decides alone
    unmeasured = _cap(prefill_tok_s=None)
    assert sized(busy, forecast(NEED, _arriving(50.0)), unmeasured, Targets(), DISAGG) == size(
        busy, unmeasured, Targets(), DISAGG
    )
    # one the load of now needs: nothing to size, forecast or not
    prompts = replace(busy, prefill_tok_s=500.0)
    ahead = forecast(prompts, _arriving(50.0))
    assert sized(prompts, ahead, unmeasured, Targets(), DISAGG) is None


def test_the_forecast_alone_never_exceeds_the_pools_max() -> None:
    got = sized(NEED, forecast(NEED, _arriving(10_000.0)), _cap(), Targets(), DISAGG)
    assert got is not None and got.replicas == {"prefill": 8, "decode": 8}
    small = {"prefill": Bounds(0, 2), "decode": Bounds(1, 3)}
    got = sized(NEED, forecast(NEED, _arriving(10_000.0)), _cap(), Targets(), small)
    assert got is not None and got.replicas == {"prefill": 2, "decode": 3}


# ---- the loop ------------------------------------------------------------------------------
@dataclass
class ArrivingSim(Sim):
    """Sim's workers, requests of a p90 output of 200 tokens (living 2 + 200 x 0.1 = 22 s
    at the targets), and one router counting `rate` arrivals a second."""

    rate: float = 0.0
    arrived: float = 0.0
    unreadable: bool = False  # the arrival counts cannot be read
    asks: int | None = None  # the max_tokens each request arriving asks for (None: uncounted)
    asked: float = 0.0

    def _record(self, pool: str, wid: str, n: int) -> WorkerRecord:
        rec = super()._record(pool, wid, n)
        rec.output_tokens_p90 = 200
        return rec

    def arrivals(self) -> list[ArrivalCount]:
        if self.unreadable:
            raise ConnectionError("redis is down")
        asked = None if self.asks is None else int(self.asked)
        return [_count(int(self.arrived), self.t, prompt=0, asked=asked)]  # decode's load alone


def _scaler(sim: ArrivingSim) -> Autoscaler:
    return Autoscaler(CONFIG, sim.records, sim, clock=lambda: sim.t, read_arrivals=sim.arrivals)


def _run(sim: ArrivingSim, scaler: Autoscaler, until: float) -> list[Decision]:
    decisions = []
    while sim.t < until:
        sim.t += 1.0
        sim.arrived += sim.rate
        sim.asked += sim.rate * (sim.asks or 0)
        decisions += scaler.tick()
        sim.ready = dict(sim.set_to)
    return decisions


def test_a_load_step_grows_the_decode_pool_while_its_requests_are_still_few() -> None:
    sim = ArrivingSim(requests=4, rate=0.2)  # 0.2 x 22 s: 5 in flight, one worker
    scaler = _scaler(sim)
    _run(sim, scaler, until=10)
    assert sim.scaled == []
    sim.rate = 6.0  # 132 in flight once they have come: 4 workers; 4 decoding so far
    decisions = _run(sim, scaler, until=45)
    assert sim.set_to["decode"] == 4 and sim.requests == 4
    ups = [(11 + i // 2, d) for i, d in enumerate(decisions) if d.direction == "up"]
    # the panic window (4 s) counts 24 arrivals once it is past the step: sure of 6.00/s
    # less one standard deviation (sqrt(24) of 24), 4.78/s x 22 s = 106 in flight, 3
    # workers; the 4th once the stable window (30 s) has the step's rate too
    assert [(t, d.pool, d.current, d.desired) for t, d in ups] == [
        (16, "decode", 1, 3),
        (41, "decode", 3, 4),
    ]
    first, grew = ups[0][1], ups[-1][1]
    assert "arrivals 6.00/s (panic window, up weighs 4.78/s)" in first.inputs
    assert "forecast 106 requests in flight" in first.inputs
    assert "the forecast needs decode 4, prefill 0" in grew.inputs
    assert "arrivals 6.00/s (panic window), 6.00/s (stable window)" in grew.inputs
    assert "forecast 132 requests in flight" in grew.inputs
    # the queue signals alone: 4 decoding is one worker's load
    blind = ArrivingSim(requests=4, rate=6.0)
    _run(blind, Autoscaler(CONFIG, blind.records, blind, clock=lambda: blind.t), until=25)
    assert blind.set_to["decode"] == 1
    signal = scaler.metrics.signal
    assert signal.labels("arrival_rate_panic")._value.get() == pytest.approx(6.0)
    assert signal.labels("forecast_requests")._value.get() == 132


def test_a_falling_rate_shrinks_no_sooner_than_the_stable_window_allows() -> None:
    # the requests in flight say one worker throughout: only the forecast keeps four
    sim = ArrivingSim(requests=4, rate=6.0)
    scaler = _scaler(sim)
    _run(sim, scaler, until=70)
    assert sim.set_to["decode"] == 4
    sim.rate, dropped_at = 0.2, sim.t
    decisions = _run(sim, scaler, until=200)
    downs = [d for d in decisions if d.pool == "decode" and d.direction == "down"]
    assert downs, "the pool shrinks once the rate has stayed low"
    window = CONFIG.pacing.stable_window_s
    first_down_at = dropped_at + 1 + decisions.index(downs[0]) // 2  # two pools a tick
    assert first_down_at >= dropped_at + window
    assert [d.desired for d in downs] == [3, 2, 1]  # one at a time, a cooldown apart


def test_short_answers_asked_for_shrink_what_the_long_ones_finished_grew() -> None:
    """The workers' p90 output is 200 tokens (22 s a request), of requests they finished
    lately. When the arrivals ask for one token each (max_tokens), a request lives 2.1 s
    and the rate's 6 a second are 13 in flight: the pool shrinks by what they ask, a step a
    cooldown, once the stable window's arrivals and then its needs say so (30 s each),
    not once the finished requests' history has caught up."""
    for asks, shrinks in ((200, []), (None, []), (1, [(128, 3), (158, 2)])):
        sim = ArrivingSim(requests=4, rate=6.0, asks=200)
        scaler = _scaler(sim)
        _run(sim, scaler, until=70)
        assert sim.set_to["decode"] == 4
        sim.asks = asks
        decisions = _run(sim, scaler, until=170)
        downs = [
            (71 + i // 2, d.desired)  # two pools a tick, from 71 s
            for i, d in enumerate(decisions)
            if d.pool == "decode" and d.direction == "down"
        ]
        assert downs == shrinks, asks
        lives = "2.1" if asks == 1 else "22.0"
        assert f"a long request lives {lives} s" in decisions[-1].inputs


def test_zero_traffic_goes_to_the_floor_with_or_without_arrival_figures() -> None:
    for unreadable in (False, True):
        sim = ArrivingSim(
            set_to={"prefill": 3, "decode": 3}, ready={"prefill": 3, "decode": 3}, rate=0.0
        )
        sim.unreadable = unreadable
        scaler = _scaler(sim)
        decisions = _run(sim, scaler, until=29)
        assert sim.scaled == [] and all(d.direction == "hold" for d in decisions)
        _run(sim, scaler, until=31)
        assert sim.set_to == {"prefill": 0, "decode": 1}, unreadable
        want = "arrivals: no figures" if unreadable else "arrivals 0.00/s"
        assert want in decisions[-1].inputs


def test_arrival_counts_that_cannot_be_read_leave_the_queue_signals_in_charge() -> None:
    sim = ArrivingSim(requests=150, rate=50.0, unreadable=True)  # 150 decoding: 4 workers
    scaler = _scaler(sim)
    _run(sim, scaler, until=10)
    assert sim.set_to["decode"] == 4
    assert math.isnan(scaler.metrics.signal.labels("arrival_rate_panic")._value.get())


class _FakeRedis:
    """What Arrivals uses of a redis.Redis: set with PX, scan_iter, mget."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.ttl_ms: dict[str, int] = {}

    def set(self, key: str, value: str, px: int) -> None:
        self.values[key], self.ttl_ms[key] = value, px

    def scan_iter(self, match: str, count: int) -> list[str]:
        return [k for k in self.values if k.startswith(match.rstrip("*"))]

    def mget(self, keys: list[str]) -> list[str | None]:
        return [self.values.get(k) for k in keys]
