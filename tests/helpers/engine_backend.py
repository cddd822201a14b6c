"""A real `Backend` around one in-process engine, for testing the router's HTTP edge
without worker processes. The engine runs on services.worker.engine_thread.EngineLoop, the same
loop a worker uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from engine import Engine, RequestOutput
from services.router.backend import (
    ROUTE_COLOCATED,
    BackendError,
    GenerateRequest,
    StartTimes,
    TokenDelta,
)
from services.worker.engine_thread import EngineLoop

T = TypeVar("T")


class EngineBackend:
    def __init__(self, engine: Engine) -> None:
        self._loop = EngineLoop(lambda: engine)
        self._loop.start()

    # ---- the Backend protocol ---------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        rid = request.request_id
        queue = self._loop.subscribe(rid)
        finished = False
        try:
            try:
                await self._loop.call(
                    lambda e: e.add_request(rid, request.prompt_token_ids, request.params)
                )
            except ValueError as e:
                finished = True  # nothing was added
                raise BackendError(400, str(e), "invalid_request_error") from None
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise BackendError(500, f"engine failed: {item}")
                finished = item.finished
                yield _delta(item)
        finally:
            self._loop.unsubscribe(rid)
            if not finished:  # closed early or cancelled: free the engine's blocks
                self._loop.submit(lambda e: e.abort(rid))

    async def ready(self) -> bool:
        return self._loop.alive

    # ---- for tests ----------------------------------------------------------------------
    def call(self, fn: Callable[[Engine], T], timeout: float = 10.0) -> T:
        """Run `fn(engine)` on the engine thread, between steps."""
        return self._loop.submit(fn).result(timeout)

    def close(self) -> None:
        self._loop.stop()


def _delta(out: RequestOutput) -> TokenDelta:
    return TokenDelta(
        token_ids=list(out.new_token_ids),
        logprobs=list(out.new_logprobs),
        finished=out.finished,
        finish_reason=out.finish_reason,
        num_cached_tokens=out.num_cached_tokens,
        route=ROUTE_COLOCATED,
        top_logprobs=list(out.new_top_logprobs),
        start=StartTimes(out.start.queue_s, out.start.compute_s) if out.start else None,
    )


def engine_state(engine: Engine) -> dict[str, Any]:
    """What the tests check after every request: nothing running, no block leaked."""
    engine.pool.check_integrity()
    return {"unfinished": engine.has_unfinished(), "idle": engine.pool.is_idle()}
