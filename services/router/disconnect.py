"""Stop working for a client that has gone away.

A long answer nobody will read would hold a decode slot and its KV blocks, so every wait
of a request that can be long (the whole answer, the first token of a stream, the rest of
the stream) runs under one watcher of its connection, which cancels the wait when the
client drops. One watcher task per request, armed in turn by each wait:

    DisconnectWatch(receive)            the watcher starts (the body has been read)
    until_gone(first token / answer)    client leaves -> that wait is cancelled -> None
    EventStreamResponse: until_gone(stream the rest), then close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class DisconnectWatch:
    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._armed: asyncio.Task[Any] | None = None
        self._watcher = asyncio.ensure_future(_disconnected(receive))
        self._watcher.add_done_callback(self._on_done)

    def _on_done(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        self.gone = True
        if self._armed is not None:
            self._armed.cancel()

    async def until_gone(self, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None when the client has left (`work` is then cancelled,
        and its clean-up has run when this returns). Its exceptions propagate."""
        if self.gone:
            close = getattr(work, "close", None)
            if close is not None:
                close()  # never started: nothing to clean up
            return None
        task = asyncio.current_task()
        assert task is not None
        self._armed = task
        try:
            return await work
        except asyncio.CancelledError:
            if not self.gone:
                raise
            task.uncancel()  # our own cancellation: the client left, nothing failed
            return None
        finally:
            self._armed = None

    def close(self) -> None:
        """The request is done: stop watching (a finished response reads as a disconnect)."""
        self._watcher.remove_done_callback(self._on_done)
        self._watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
