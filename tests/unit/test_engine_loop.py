"""The worker's engine thread against a scripted engine: a step's outputs reach their
requests' queues in one wake-up, throttled ticks run at most as often as asked, a
stream that falls behind gets the queued outputs joined into one update, and the engine is
built and stepped on one thread."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from engine.output import RequestOutput
from engine.request import FinishReason
from services.worker.engine_thread import EngineLoop


class ScriptedEngine:
    """Steps hand out the scripted outputs, one list per step, then nothing."""

    tp = None  # one process: no tensor-parallel ranks to lose (Engine.tp)

    def __init__(self, steps: list[list[RequestOutput]]) -> None:
        self.steps = steps

    def step(self) -> list[RequestOutput]:
        return self.steps.pop(0) if self.steps else []

    def has_running(self) -> bool:
        return bool(self.steps)


def _out(rid: str, token: int, done: bool = False) -> RequestOutput:
    reason = FinishReason.LENGTH if done else None
    return RequestOutput(rid, [token], done, reason, 4, 0, token, [-0.1 * token])


def test_a_steps_outputs_reach_every_subscriber_in_one_callback() -> None:
    async def run() -> dict[str, list[int]]:
        engine = ScriptedEngine([])
        loop = EngineLoop(lambda: engine, idle_s=0.005)  # type: ignore[arg-type]
        queues = {rid: loop.subscribe(rid) for rid in ("a", "b")}
        calls: list[Any] = []
        event_loop = asyncio.get_running_loop()
        real = event_loop.call_soon_threadsafe

        def counting(*args: Any) -> Any:
            calls.append(args)
            return real(*args)

        event_loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        engine.steps = [[_out("a", 1), _out("b", 2), _out("gone", 3)], [_out("a", 4, True)]]
        loop.start()
        try:
            got = {rid: [] for rid in queues}
            for rid, want in (("a", 2), ("b", 1)):
                while len(got[rid]) < want:
                    item = await asyncio.wait_for(queues[rid].get(), 5)
                    assert isinstance(item, RequestOutput)
                    got[rid] += item.new_token_ids
        finally:
            loop.stop()
        assert len(calls) == 2  # one per step, not one per output
        return got

    assert asyncio.run(run()) == {"a": [1, 4], "b": [2]}


def test_a_throttled_tick_runs_at_most_every_every_s() -> None:
    engine = ScriptedEngine([[] for _ in range(10_000)])
    loop = EngineLoop(lambda: engine, idle_s=0.005)  # type: ignore[arg-type]
    every, fast = [], []
    loop.add_tick(lambda: every.append(time.monotonic()), every_s=0.05)
    loop.add_tick(lambda: fast.append(1))
    loop.start()
    time.sleep(0.3)
    loop.stop()
    assert len(fast) > len(every)
    assert 2 <= len(every) <= 8
    # spaced by every_s from one due time to the next; a stamp taken inside the tick can be
    # late by however long the thread was descheduled before it, so allow a fifth of that
    assert all(b - a >= 0.04 for a, b in zip(every, every[1:], strict=False)), every


def test_joined_outputs_keep_every_token_and_take_the_last_state() -> None:
    a, b = _out("r", 1), _out("r", 2, done=True)
    j = a.extend(b)
    assert j.new_token_ids == [1, 2]
    assert j.new_logprobs == [-0.1, -0.2]
    assert j.finished and j.finish_reason == FinishReason.LENGTH
    assert j.num_output_tokens == 2


def test_an_output_hook_runs_on_the_engine_thread_before_the_outputs_are_published() -> None:
    """A prefill worker leases a held prompt's blocks here, so its handle is ready when the
    output arrives: not asked for then, to wait out the next step."""

    async def run() -> tuple[list[int], set[str], list[list[str]]]:
        engine = ScriptedEngine([])
        loop = EngineLoop(lambda: engine, idle_s=0.005)  # type: ignore[arg-type]
        hooked: list[list[str]] = []
        threads: set[str] = set()

        def hook(outs: Any) -> None:
            threads.add(threading.current_thread().name)
            hooked.append([o.request_id for o in outs])

        loop.add_output_hook(hook)
        queue = loop.subscribe("a")
        engine.steps = [[_out("a", 1), _out("b", 2)], [], [_out("a", 3, True)]]
        loop.start()
        seen_at_arrival: list[int] = []
        try:
            for _ in range(2):
                item = await asyncio.wait_for(queue.get(), 5)
                assert isinstance(item, RequestOutput)
                seen_at_arrival.append(len(hooked))  # hooks run by the time it came
        finally:
            loop.stop()
        return seen_at_arrival, threads, hooked

    seen_at_arrival, threads, hooked = asyncio.run(run())
    assert hooked == [["a", "b"], ["a"]]  # once a step with outputs, with all of them
    assert threads == {"engine-loop"}
    assert seen_at_arrival[0] >= 1 and seen_at_arrival[1] == 2


def test_a_quiet_engine_waits_long_and_a_call_still_wakes_it_at_once() -> None:
    quiet = [True]
    loop = EngineLoop(
        lambda: ScriptedEngine([]),  # type: ignore[arg-type,return-value]
        idle_wait=lambda: 10.0 if quiet[0] else 0.005,
    )
    ticks: list[float] = []
    loop.add_tick(lambda: ticks.append(time.monotonic()))
    loop.start()
    try:
        time.sleep(0.2)
        assert len(ticks) == 1  # the first pass, then a quiet wait
        t0 = time.monotonic()
        assert loop.submit(lambda e: 42).result(5) == 42
        assert time.monotonic() - t0 < 1.0
        quiet[0] = False
        loop.submit(lambda e: None).result(5)
        time.sleep(0.2)
        assert len(ticks) > 10  # every 5 ms again
    finally:
        loop.stop()


def test_the_engine_is_built_and_stepped_on_the_same_thread_and_a_failed_build_raises() -> None:
    """One thread runs the engine's parallel ops, its build included (OpenMP keeps a
    team of threads per calling thread; see EngineLoop)."""
    built_on: list[int] = []
    stepped_on: set[int] = set()

    class Recording(ScriptedEngine):
        def step(self) -> list[RequestOutput]:
            stepped_on.add(threading.get_ident())
            return super().step()

    def make() -> Recording:
        built_on.append(threading.get_ident())
        return Recording([[] for _ in range(50)])

    loop = EngineLoop(make, idle_s=0.005)  # type: ignore[arg-type]
    assert not stepped_on  # nothing steps before start()
    loop.start()
    try:
        loop.submit(lambda e: None).result(5)
        time.sleep(0.05)
    finally:
        loop.stop()
    assert stepped_on == set(built_on)
    assert built_on[0] != threading.get_ident()

    def broken() -> ScriptedEngine:
        raise ValueError("no such model")

    try:
        EngineLoop(broken)  # type: ignore[arg-type]
    except ValueError as e:
        assert str(e) == "no such model"
    else:
        raise AssertionError("the build's error was not raised")
