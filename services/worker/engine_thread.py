"""The engine on a thread of its own, driven from asyncio.

The engine is single-threaded by design; everything that touches it (its build, requests,
aborts, NIXL reads, lease bookkeeping) runs on this one thread, between steps:

    asyncio handlers --call(fn)--> [commands] --> engine thread: run commands
                                                                run tick hooks (due ones)
                                                                engine.step()
    per-request asyncio queues <--call_soon_threadsafe-- outputs --+
                               (one wake-up per step and event loop, not one per output)

A step that fails kills the loop: every subscriber gets the error and later calls raise
EngineDead (a gRPC UNAVAILABLE at the edge), never a silent hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from engine import Engine
from engine.output import RequestOutput

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDead(RuntimeError):
    pass


_Command = tuple[Callable[[Engine], object], "concurrent.futures.Future[Any]"]


_Item = RequestOutput | BaseException
_Delivery = list[tuple["asyncio.Queue[_Item]", _Item]]


class _Sub:
    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    def put(self, item: _Item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _deliver(items: _Delivery) -> None:
    """Event loop: a step's outputs into their requests' queues, in one callback."""
    for q, item in items:
        q.put_nowait(item)


GIL_SWITCH_S = 0.001


class _Tick:
    __slots__ = ("due", "every_s", "fn")

    def __init__(self, fn: Callable[[], None], every_s: float) -> None:
        self.fn, self.every_s, self.due = fn, every_s, 0.0


class EngineLoop:
    def __init__(
        self,
        make_engine: Callable[[], Engine],
        idle_s: float = 0.02,
        idle_wait: Callable[[], float] | None = None,
    ) -> None:
        """Starts the engine thread, which builds the engine (`make_engine()`: the model's
        load, packing and timing) and then waits for `start()`; raises what the build
        raised. The build runs there because OpenMP keeps a team of threads for every
        thread that has run a parallel op: with two teams on two cores, libgomp stops
        spinning at its barriers and sleeps, and a decode step at batch 32 took 90-100 ms
        instead of 55 (the model loaded on one thread, stepped on another).

        With nothing running and no call queued, the loop waits `idle_wait()` seconds
        (engine thread; default `idle_s`) for a call, which wakes it at once. Waits are
        how often the ticks run meanwhile: a worker makes them long when there is nothing
        to tick (a wake-up of an idle thread costs ~0.15 ms of CPU on a small VM, and a
        host runs many mock workers) and short while it polls KV reads."""
        self._idle_wait = idle_wait or (lambda: idle_s)
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._go = threading.Event()  # start() or stop()
        self._stop = threading.Event()
        self._subs: dict[str, _Sub] = {}
        self._ticks: list[_Tick] = []
        self._output_hooks: list[Callable[[Sequence[RequestOutput]], None]] = []
        self.error: BaseException | None = None
        # When the loop last went round (monotonic): proof of progress, read by the
        # worker's liveness check from another thread (a float store is atomic).
        self.last_iteration = time.monotonic()
        built: concurrent.futures.Future[Engine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(make_engine, built), name="engine-loop", daemon=True
        )
        self._thread.start()
        self.engine = built.result()

    def add_tick(self, fn: Callable[[], None], every_s: float = 0.0) -> None:
        """Run `fn` on the engine thread before every step, or, with `every_s`, before
        the first step at least that long after its last run (bookkeeping that need not
        cost a step's time); in either case at least once per idle wait."""
        self._ticks.append(_Tick(fn, every_s))

    def add_output_hook(self, fn: Callable[[Sequence[RequestOutput]], None]) -> None:
        """Run `fn(outputs)` on the engine thread after each step that has outputs, before
        they are published: what their subscribers must find done when they arrive, done
        before the next step rather than behind it (a call queued on their arrival waits
        out that whole step)."""
        self._output_hooks.append(fn)

    def start(self) -> None:
        # The step dispatches ~600 torch ops from Python, taking the GIL back after each;
        # the event loop's threads (gRPC, outputs, heartbeats) hold it meanwhile. At
        # CPython's default 5 ms switch interval the engine waited up to 5 ms per op while
        # the second core idled: 1 ms measured +12% tok/s serving 32 streams on 2 cores
        # (0.5 and 2 ms alike). Process-wide: the engine is what this process is for.
        sys.setswitchinterval(GIL_SWITCH_S)
        self._go.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._go.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    # ---- talking to the engine -----------------------------------------------------
    def submit(self, fn: Callable[[Engine], T]) -> concurrent.futures.Future[T]:
        """Run `fn(engine)` on the engine thread; usable from any thread."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self.alive:
            fut.set_exception(EngineDead(f"the engine loop has stopped ({self.error})"))
            return fut
        self._commands.put((fn, fut))
        self._wake.set()
        if not self.alive:  # it died while we queued: fail what is left, ours included
            self._fail_commands(EngineDead(f"the engine loop has stopped ({self.error})"))
        return fut

    async def call(self, fn: Callable[[Engine], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def subscribe(self, request_id: str) -> asyncio.Queue[RequestOutput | BaseException]:
        """Outputs of `request_id` arrive on the returned queue (call from the event loop,
        before the request is added, so that nothing is missed)."""
        sub = _Sub(asyncio.get_running_loop())
        self._subs[request_id] = sub
        return sub.queue

    def unsubscribe(self, request_id: str) -> None:
        self._subs.pop(request_id, None)

    def publish(self, out: RequestOutput) -> None:
        """Engine thread: hand an output to its subscriber (ticks use this too)."""
        sub = self._subs.get(out.request_id)
        if sub is not None:
            sub.put(out)

    def fail(self, request_id: str, error: BaseException) -> None:
        """Any thread: end one request's stream with `error`."""
        sub = self._subs.get(request_id)
        if sub is not None:
            sub.put(error)

    def publish_all(self, outs: Sequence[RequestOutput]) -> None:
        """Engine thread: a step's outputs, one wake-up per event loop (a wake-up is a
        syscall and a pass of that loop: per output, they cost more than the step)."""
        by_loop: dict[asyncio.AbstractEventLoop, _Delivery] = {}
        for out in outs:
            sub = self._subs.get(out.request_id)
            if sub is not None:
                by_loop.setdefault(sub.loop, []).append((sub.queue, out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    # ---- the thread ----------------------------------------------------------------
    def _main(
        self, make_engine: Callable[[], Engine], built: concurrent.futures.Future[Engine]
    ) -> None:
        try:
            engine = make_engine()
        except BaseException as e:
            self.error = e
            built.set_exception(e)
            return
        built.set_result(engine)
        self._go.wait()
        self.last_iteration = time.monotonic()
        self._run()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._iterate()
        except BaseException as e:
            log.exception("engine loop died")
            self.error = e
            self._fail_everyone(e)

    def _iterate(self) -> None:
        self.last_iteration = time.monotonic()
        self._wake.clear()
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self.engine))
                except Exception as e:  # the caller's error, not the loop's
                    fut.set_exception(e)
        now = time.monotonic()
        for tick in self._ticks:
            if now >= tick.due:
                tick.due = now + tick.every_s
                tick.fn()
        outs = self.engine.step()
        if outs:
            for hook in self._output_hooks:
                hook(outs)
            self.publish_all(outs)
        if not self.engine.has_running() and self._commands.empty():
            self._wake.wait(self._idle_wait())

    def _fail_everyone(self, error: BaseException) -> None:
        dead = EngineDead(f"the engine loop died: {error!r}")
        for sub in list(self._subs.values()):
            sub.put(dead)
        self._fail_commands(dead)

    def _fail_commands(self, dead: EngineDead) -> None:
        while True:
            try:
                _, fut = self._commands.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                fut.set_exception(dead)
