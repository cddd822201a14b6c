"""The gRPC edge of a worker: each handler parses with services.wire, calls the worker
(services/worker/handlers.py) and converts the answer back. Errors become status codes
(status.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from services import wire
from services.pb import worker_pb2, worker_pb2_grpc
from services.worker.handlers import WorkerCalls
from services.worker.status import KNOWN, code_of

T = TypeVar("T")


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call` (parsing included: it raises ValueError), mapping errors to codes."""
    try:
        return await call()
    except KNOWN as e:
        await _abort(context, e)
        raise  # unreachable: abort raises


async def _abort(context: grpc.aio.ServicerContext, e: Exception) -> None:
    await context.abort(code_of(e), str(e))


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, calls: WorkerCalls) -> None:
        self.calls = calls

    async def Prefill(
        self, request: worker_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.PrefillResponse:
        res = await _guard(context, lambda: self.calls.prefill(wire.PrefillCall.from_pb(request)))
        return wire.prefill_reply_to_pb(res)

    async def Decode(
        self, request: worker_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.DecodeChunk]:
        updates = await _guard(context, lambda: self.calls.decode(wire.DecodeCall.from_pb(request)))
        try:
            async for update in updates:
                yield wire.decode_update_to_pb(update)
        except KNOWN as e:
            await _abort(context, e)

    async def Abort(
        self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.AbortResponse:
        found = await _guard(context, lambda: self.calls.abort(wire.abort_from_pb(request)))
        return wire.found_to_pb(found)

    async def Health(
        self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.HealthResponse:
        return self.calls.health().to_pb()

    async def Stats(
        self, request: worker_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StatsResponse:
        return wire.stats_to_pb(await _guard(context, self.calls.stats))

    async def DumpKV(
        self, request: worker_pb2.DumpKVRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DumpKVResponse:
        return (await _guard(context, self.calls.dump_kv)).to_pb()
