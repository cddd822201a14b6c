"""The autoscaler's tick (services/autoscaler/loop.py) on registry records written by hand,
a clock moved by hand and an actuator that only remembers: each pool grows on its own
signal and shrinks after the load drops; zero traffic goes to the floor; a registry that
cannot be read holds; a scale-up that never becomes ready is cancelled; a count changed by
hand is kept. Real workers and Ray: tests/integration/test_autoscaler.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import pytest

from services.autoscaler.loop import Autoscaler, AutoscalerConfig, Decision
from services.autoscaler.pacing import Pacing
from services.autoscaler.ray_actuator import RayActuator
from services.autoscaler.sizing import Bounds, Targets
from services.cluster.pools import PoolMember, PoolSpec
from services.pb.events_pb2 import WorkerRecord

PACE = Pacing(stable_window_s=30, panic_window_s=4, up_cooldown_s=4, down_cooldown_s=30)
CONFIG = AutoscalerConfig(
    bounds={"prefill": Bounds(0, 4), "decode": Bounds(1, 4)},
    targets=Targets(ttft_s=2.0, itl_s=0.1),
    pacing=PACE,
    ready_timeout_s=20,
)


@dataclass
class Sim:
    """Workers that each report steady speeds (prefill 1,000 tok/s busy; a decode step of
    20 ms + 2 ms a sequence) and the load set on them, and an actuator that remembers."""

    t: float = 0.0
    set_to: dict[str, int] = field(default_factory=lambda: {"prefill": 1, "decode": 1})
    ready: dict[str, int] = field(default_factory=lambda: {"prefill": 1, "decode": 1})
    prompt_tok_s: float = 0.0  # computed by the prefill pool, per second
    backlog: int = 0  # prompt tokens queued on the prefill pool
    requests: int = 0  # decoding, spread over the decode pool
    down: bool = False  # the registry cannot be read
    scaled: list[tuple[str, int]] = field(default_factory=list)
    _totals: dict[str, list[float]] = field(default_factory=dict)

    def replicas(self) -> dict[str, int]:
        return dict(self.set_to)

    def scale(self, pool: str, n: int) -> None:
        self.set_to[pool] = n
        self.scaled.append((pool, n))

    def records(self) -> list[WorkerRecord]:
        if self.down:
            raise ConnectionError("redis is down")
        out = []
        for pool, n in self.ready.items():
            for i in range(n):
                out.append(self._record(pool, f"{pool}-{i}", n))
        return out

    def _record(self, pool: str, wid: str, n: int) -> WorkerRecord:
        # counters as of self.t: each worker's share of the load at steady speed
        rec = WorkerRecord(worker_id=wid, role=pool, num_blocks=4096, max_num_seqs=64)
        rec.started_at_unix_ms = 1
        rec.heartbeat_unix_ms = int(self.t * 1000)  # a heartbeat at every read
        if pool == "prefill":
            tokens = self.prompt_tok_s / n * self.t
            rec.prefill_tokens_total = int(tokens)
            rec.prefill_busy_us_total = int(tokens / 1000 * 1e6)
            rec.queued_prefill_tokens = self.backlog // n
        else:
            batch = self.requests / n
            steps, tokens, busy_s, as_of = self._totals.setdefault(wid, [0.0, 0.0, 0.0, self.t])
            if batch:  # busy all along, at 20 ms + 2 ms a sequence a step
                new_steps = (self.t - as_of) / (0.020 + 0.002 * batch)
                steps, tokens, busy_s = (
                    steps + new_steps,
                    tokens + new_steps * batch,
                    busy_s + self.t - as_of,
                )
            self._totals[wid] = [steps, tokens, busy_s, self.t]
            rec.decode_steps_total, rec.decode_tokens_total = int(steps), int(tokens)
            rec.decode_busy_us_total = int(busy_s * 1e6)
            rec.running = round(batch)
            rec.used_blocks = round(batch) * 2
        return rec


def _run(sim: Sim, scaler: Autoscaler, until: float, every: float = 1.0) -> list[str]:
    """Ticks until `until`; new workers become ready as soon as they are asked for."""
    reasons = []
    while sim.t < until:
        sim.t += every
        for d in scaler.tick():
            reasons.append(f"{d.pool}:{d.reason}")
        sim.ready = dict(sim.set_to)
    return reasons


def _scaler(sim: Sim, config: AutoscalerConfig = CONFIG) -> Autoscaler:
    return Autoscaler(config, sim.records, sim, clock=lambda: sim.t)


def test_long_answers_running_do_not_stretch_the_stable_window() -> None:
    """Requests of a p90 output of 200 tokens live 22 s at the targets, past a stable window
    of 5 s. Once nothing arrives, each pool shrinks on the needs of the stable window: the
    requests still running are in each of them (the load of now), and what arrivals would
    bring for a lifetime is the forecast's part (forecast.py), not a longer window's, which
    would keep a pool from shrinking under a few long answers for as long as they run."""
    short = replace(PACE, stable_window_s=5, panic_window_s=2, down_cooldown_s=5)
    sim = _LongAnswers(set_to={"prefill": 3, "decode": 4}, ready={"prefill": 3, "decode": 4})
    sim.prompt_tok_s, sim.requests = 2400.0, 150  # 3 prefill workers' work, 4 decode's
    scaler = _scaler(sim, replace(CONFIG, pacing=short))
    _run(sim, scaler, until=30)
    assert sim.scaled == []
    sim.prompt_tok_s, sim.requests = 0.0, 4  # no prompts; one decode worker's load
    _run(sim, scaler, until=35)
    assert sim.scaled == []  # the stable window's needs still say so
    reasons = _run(sim, scaler, until=46)
    # 36, 41, 46 s: a stable window, then a step a down cooldown, both pools
    assert sim.scaled == [("prefill", 2), ("decode", 3), ("prefill", 1), ("decode", 2)] + [
        ("prefill", 0),
        ("decode", 1),
    ]
    assert "decode:down: 1 enough for the stable window" in reasons


@dataclass
class _LongAnswers(Sim):
    def _record(self, pool: str, wid: str, n: int) -> WorkerRecord:
        rec = super()._record(pool, wid, n)
        rec.output_tokens_p90 = 200  # 2 s + 200 x 0.1 s at CONFIG's targets
        return rec


def test_each_pool_grows_on_its_own_signal_and_shrinks_when_the_load_drops() -> None:
    sim = Sim(requests=4)
    scaler = _scaler(sim)
    _run(sim, scaler, until=10)
    assert sim.scaled == []  # nothing to grow, and too soon to shrink
    sim.requests = 150  # decode-heavy: 1 worker steps in 0.32 s, 4 in 0.095
    _run(sim, scaler, until=25)
    assert sim.set_to["decode"] == 4
    assert sim.scaled == [("decode", 4)]  # in one step: up to +4 a step
    sim.prompt_tok_s, sim.backlog = 2500.0, 2000  # prefill-heavy as well
    _run(sim, scaler, until=40)
    assert sim.set_to["prefill"] >= 3
    sim.requests, sim.prompt_tok_s, sim.backlog = 4, 0.0, 0
    _run(sim, scaler, until=200)
    assert sim.set_to == {"prefill": 0, "decode": 1}


def test_zero_traffic_goes_to_the_floor() -> None:
    sim = Sim(set_to={"prefill": 3, "decode": 3}, ready={"prefill": 3, "decode": 3})
    scaler = _scaler(sim)
    reasons = _run(sim, scaler, until=29)
    assert sim.scaled == [] and all("hold" in r for r in reasons)
    _run(sim, scaler, until=31)
    assert sim.set_to == {"prefill": 0, "decode": 1}  # in one step each


def test_the_whole_cluster_goes_to_zero_and_held_requests_bring_a_worker_back() -> None:
    config = AutoscalerConfig(
        bounds={"prefill": Bounds(0, 4), "decode": Bounds(0, 4)}, pacing=PACE, ready_timeout_s=60
    )
    sim = Sim(set_to={"prefill": 1, "decode": 2}, ready={"prefill": 1, "decode": 2})
    held = [0]
    scaler = Autoscaler(config, sim.records, sim, clock=lambda: sim.t, read_held=lambda: held[0])
    _run(sim, scaler, until=35)
    assert sim.set_to == {"prefill": 0, "decode": 0}  # a stable window without load
    scaler = Autoscaler(config, sim.records, sim, clock=lambda: sim.t, read_held=lambda: held[0])
    _run(sim, scaler, until=40)  # a restarted autoscaler: nothing measured, nothing held
    assert sim.set_to == {"prefill": 0, "decode": 0}
    held[0] = 3  # the router holds three requests
    sim.t += 1.0
    decisions = {d.pool: d for d in scaler.tick()}  # no speed known, no window waited out
    assert decisions["decode"].desired == 1 and "3 request(s) held" in decisions["decode"].reason
    assert decisions["prefill"].desired == 0  # prompts can be prefilled on the decode worker
    while sim.t < 80:  # the worker starts for longer than a stable window, the requests held
        sim.t += 1.0
        assert {d.pool: d.desired for d in scaler.tick()} == {"prefill": 0, "decode": 1}
    sim.ready = {"prefill": 0, "decode": 1}  # it serves them; held ones are load, not idle:
    sim.t += 1.0  # it is not retired the moment it is ready
    assert {d.pool: d.desired for d in scaler.tick()} == {"prefill": 0, "decode": 1}
    signal = scaler.metrics.registry.get_sample_value(
        "tandem_autoscaler_signal", {"name": "held_requests"}
    )
    assert signal == 3


def test_a_registry_outage_holds_every_pool(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim(requests=150)
    scaler = _scaler(sim)
    _run(sim, scaler, until=2)
    sim.down = True
    with caplog.at_level(logging.WARNING):
        reasons = _run(sim, scaler, until=20)
    assert sim.scaled == [] and reasons and all("metrics unavailable" in r for r in reasons)
    assert "cannot be read" in caplog.text
    sim.down = False
    _run(sim, scaler, until=30)
    assert sim.set_to["decode"] > 1  # back to work on fresh figures


def test_a_scale_up_that_never_becomes_ready_is_cancelled() -> None:
    sim = Sim(requests=150)
    scaler = _scaler(sim)
    ups: list[float] = []
    cancelled: list[Decision] = []
    while sim.t < 60 and not cancelled:  # the new workers never start
        sim.t += 1.0
        decisions = scaler.tick()
        ups += [sim.t for d in decisions if d.pool == "decode" and d.direction == "up"]
        cancelled = [d for d in decisions if d.direction == "cancel"]
    assert [d.pool for d in cancelled] == ["decode"] and len(ups) == 1
    assert cancelled[0].desired == 1 and sim.set_to["decode"] == 1
    assert 20 <= sim.t - ups[0] <= 22  # ready_timeout_s after it was asked for (ticks: 1 s)
    assert "not ready after 20 s" in cancelled[0].reason


def test_a_start_is_timed_from_the_ask_to_the_workers_serving() -> None:
    sim = Sim(requests=150)
    scaler = _scaler(sim)
    asked = None
    while sim.t < 30 and asked is None:
        sim.t += 1.0
        if any(d.pool == "decode" and d.direction == "up" for d in scaler.tick()):
            asked = sim.t
    assert asked is not None
    while sim.t < asked + 5:
        sim.t += 1.0
        assert all("a decode worker starts in" not in d.inputs for d in scaler.tick())
    sim.ready = dict(sim.set_to)  # its workers serve 6 s after they were asked for
    sim.t += 1.0
    scaler.tick()
    sim.t += 1.0
    assert all("a decode worker starts in 6.0 s" in d.inputs for d in scaler.tick())


def test_a_count_changed_by_hand_is_the_new_current_size(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim(requests=40)
    scaler = _scaler(sim)
    _run(sim, scaler, until=5)
    assert sim.set_to["decode"] == 1
    sim.set_to["decode"] = 3  # kubectl scale, by hand
    with caplog.at_level(logging.INFO):
        reasons = _run(sim, scaler, until=20)
    assert "set to 3 by hand" in caplog.text
    assert sim.scaled == [] and sim.set_to["decode"] == 3  # kept: the stable window has not passed
    assert any("decode:hold" in r for r in reasons)


def test_colocated_clusters_have_one_pool() -> None:
    config = AutoscalerConfig(bounds={"both": Bounds(1, 4)}, pacing=PACE)
    assert config.serving == "both"
    with pytest.raises(ValueError):
        AutoscalerConfig(bounds={"decode": Bounds(1, 4)})


# ---- the Ray actuator's choices (no Ray: a stand-in for Pools) -----------------------------
class FakePools:
    def __init__(self, *names: str) -> None:
        self.members = {n: PoolMember(n, n.rsplit("-", 1)[0], actor=None) for n in names}
        self.retired: list[str] = []
        self.added: list[str] = []

    def add(self, spec: PoolSpec) -> PoolMember:
        name = f"{spec.role}-{len(self.members) + len(self.retired)}"
        self.members[name] = PoolMember(name, spec.role, actor=None)
        self.added.append(name)
        return self.members[name]

    def retire(self, name: str, drain_s: float) -> None:
        del self.members[name]
        self.retired.append(name)

    def reap(self) -> list[str]:
        return []


def _actuator(pools: FakePools, records: list[WorkerRecord]) -> RayActuator:
    specs = {"prefill": PoolSpec("prefill", 1), "decode": PoolSpec("decode", 1)}
    return RayActuator(pools, specs, lambda: records, drain_s=5)  # type: ignore[arg-type]


def test_scale_down_retires_the_unready_then_the_least_busy() -> None:
    pools = FakePools("decode-0", "decode-1", "decode-2", "decode-3", "prefill-0")
    busy = [
        WorkerRecord(worker_id="decode-0", role="decode", running=5),
        WorkerRecord(worker_id="decode-1", role="decode", running=1, held_blocks=9),
        WorkerRecord(worker_id="decode-2", role="decode", running=1, held_blocks=3),
    ]  # decode-3: not in the registry yet
    act = _actuator(pools, busy)
    assert act.replicas() == {"prefill": 1, "decode": 4}
    act.scale("decode", 2)
    assert pools.retired == ["decode-3", "decode-2"]  # unready, then 1 in flight, fewer held
    act.scale("decode", 4)
    assert len(pools.added) == 2 and act.replicas()["decode"] == 4


def test_without_figures_the_newest_are_retired() -> None:
    pools = FakePools("decode-0", "decode-1", "decode-2")

    def down() -> list[WorkerRecord]:
        raise ConnectionError("redis is down")

    specs = {"decode": PoolSpec("decode", 1)}
    RayActuator(pools, specs, down, drain_s=5).scale("decode", 1)  # type: ignore[arg-type]
    assert pools.retired == ["decode-2", "decode-1"]


def test_an_actuator_that_cannot_be_read_decides_nothing(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim(requests=150)
    scaler = _scaler(sim)

    def away() -> dict[str, int]:
        raise ConnectionError("the API server is away")

    sim.replicas = away  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        assert scaler.tick() == []
    assert "cannot be read" in caplog.text and sim.scaled == []
