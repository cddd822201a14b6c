"""The engine on a thread of its own, driven from asyncio.

The engine is single-threaded by design; everything that touches it (requests, aborts,
NIXL reads, lease bookkeeping) runs on this one thread, between steps:

    asyncio handlers --call(fn)--> [commands] --> engine thread: run commands
                                                                run tick hooks
                                                                engine.step()
    per-request asyncio queues <--call_soon_threadsafe-- outputs --+

A step that fails kills the loop: every subscriber gets the error and later calls raise
EngineDead (a gRPC UNAVAILABLE at the edge), never a silent hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from engine import Engine
from engine.output import RequestOutput

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDead(RuntimeError):
    pass


_Command = tuple[Callable[[Engine], object], "concurrent.futures.Future[Any]"]


class _Sub:
    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class EngineLoop:
    def __init__(self, engine: Engine, idle_s: float = 0.02) -> None:
        self.engine = engine
        self._idle_s = idle_s  # how often ticks run while nothing else happens
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._subs: dict[str, _Sub] = {}
        self._ticks: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.error: BaseException | None = None

    def add_tick(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread before every step (and at least every idle_s)."""
        self._ticks.append(fn)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
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

    # ---- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._iterate()
        except BaseException as e:
            log.exception("engine loop died")
            self.error = e
            self._fail_everyone(e)

    def _iterate(self) -> None:
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
        for tick in self._ticks:
            tick()
        for out in self.engine.step():
            self.publish(out)
        if not self.engine.has_running() and self._commands.empty():
            self._wake.wait(self._idle_s)

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
