"""Stop working for a client that has gone away.

Starlette cancels a streaming response when its client disconnects, but a plain endpoint
runs on to the end. A long answer nobody will read would hold a decode slot and its KV
blocks, so the waits that can be long (the whole answer, or the first token of a stream)
run beside a watcher of the connection and are cancelled when it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when the client disconnected first (`work` is then
    cancelled, and its clean-up has run when this returns). Its exceptions propagate."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
