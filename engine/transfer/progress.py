"""Answering peers' reads of a worker's KV while its engine thread is inside a step.

A READ of our memory completes only as our NIXL agent progresses (nixl_transfer.py). A
worker's engine loop progresses it between steps, enough for a decode worker's short
steps; a prefill worker's step can last a whole prompt's prefill, and a read posted
meanwhile waited for its end: on a busy mock prefill pool (768-token prompts, ~0.4 s
steps) 35 of 80 reads took 0.25-1 s instead of ~20 ms, and each such hand-off pushed its
request's TPOT past 60 ms. NIXL's own progress thread spins a core, so this thread
progresses the agent every `every_s` (1 ms: a few microseconds of work each) only while
the worker holds prompts for readers, and sleeps otherwise until woken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

DEFAULT_EVERY_S = 0.001
log = logging.getLogger(__name__)


class Progressed(Protocol):
    def progress(self) -> None: ...

    def expect_readers(self, expected: bool) -> None:
        """Told when this thread starts and stops progressing (a tensor-parallel worker's
        followers then progress their own agents: engine/parallel/kv.py)."""


class ReadProgress:
    def __init__(
        self,
        transfer: Progressed,
        readers_expected: Callable[[], bool],
        every_s: float = DEFAULT_EVERY_S,
    ) -> None:
        """`readers_expected()` (any thread): whether a peer may be reading us now."""
        self._transfer = transfer
        self._expected = readers_expected
        self._every_s = every_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.rounds = 0  # progress calls made (tests)
        self._thread = threading.Thread(target=self._run, name="nixl-progress", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Readers may come now (a prompt's blocks were just leased)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            self._transfer.expect_readers(True)
            try:
                while self._expected() and not self._stop.wait(self._every_s):
                    self._transfer.progress()
                    self.rounds += 1
            except Exception:  # the engine loop still progresses between steps
                log.exception("NIXL progress failed; reads wait for the engine loop")
                return
            finally:
                self._transfer.expect_readers(False)
