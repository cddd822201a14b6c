"""The gRPC edge of a worker: protobuf in, protobuf out, errors as status codes.

ValueError (bad input)          -> INVALID_ARGUMENT
RoleError (wrong kind of worker) -> FAILED_PRECONDITION
EngineDead                       -> UNAVAILABLE
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import handle_from_pb, handle_to_pb, params_from_pb
from services.worker.core import DecodeUpdate, RoleError, Worker
from services.worker.engine_thread import EngineDead
from services.worker.peers import PeerWatcher

T = TypeVar("T")
_CODES: dict[type[Exception], grpc.StatusCode] = {
    ValueError: grpc.StatusCode.INVALID_ARGUMENT,
    RoleError: grpc.StatusCode.FAILED_PRECONDITION,
    EngineDead: grpc.StatusCode.UNAVAILABLE,
}


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except tuple(_CODES) as e:
        code = next(c for t, c in _CODES.items() if isinstance(e, t))
        await context.abort(code, str(e))
        raise  # unreachable: abort raises


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, worker: Worker, peers: PeerWatcher | None) -> None:
        self.worker = worker
        self.peers = peers

    async def Prefill(
        self, request: worker_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.PrefillResponse:
        async def run() -> worker_pb2.PrefillResponse:
            _need_id(request.request_id)
            res = await self.worker.prefill(
                request.request_id,
                list(request.prompt_token_ids),
                params_from_pb(request.params),
            )
            msg = worker_pb2.PrefillResponse(
                first_token=res.first_token,
                num_cached_tokens=res.num_cached_tokens,
                finish_reason=res.finish_reason or "",
            )
            if res.first_logprob is not None:
                msg.first_logprob = res.first_logprob
            if res.handle is not None:
                msg.kv.CopyFrom(handle_to_pb(res.handle))
            return msg

        return await _guard(context, run)

    async def Decode(
        self, request: worker_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.DecodeChunk]:
        async def start() -> AsyncIterator[DecodeUpdate]:
            _need_id(request.request_id)
            params = params_from_pb(request.params)
            handle = handle_from_pb(request.kv) if request.HasField("kv") else None
            if handle is not None and self.peers is not None:
                await self.peers.ensure(handle.worker_id, handle.agent_name)
            if request.generated_token_ids:  # a contract for a later issue; never half-done
                raise ValueError("resuming a migrated request is not supported yet")
            prompt = list(request.prompt_token_ids)
            first = request.first_token if request.HasField("first_token") else None
            return self.worker.decode(request.request_id, prompt, params, handle, first)

        updates = await _guard(context, start)
        stream = aiter(updates)
        while True:
            try:
                update = await _guard(context, lambda: anext(stream))
            except StopAsyncIteration:
                return
            yield _chunk(update)

    async def Abort(
        self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.AbortResponse:
        found = await _guard(context, lambda: self.worker.abort(request.request_id))
        return worker_pb2.AbortResponse(found=found)

    async def Health(
        self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.HealthResponse:
        return worker_pb2.HealthResponse(
            ok=self.worker.loop.alive, worker_id=self.worker.worker_id, role=self.worker.role
        )

    async def Stats(
        self, request: worker_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StatsResponse:
        s = await _guard(context, lambda: self.worker.stats(integrity=True))
        return worker_pb2.StatsResponse(
            running=s.running,
            waiting=s.waiting,
            num_blocks=s.num_blocks,
            free_blocks=s.free_blocks,
            cached_blocks=s.cached_blocks,
            held_blocks=s.held_blocks,
            leases=s.leases,
            kv_bytes_read=s.kv_bytes_read,
            kv_reads=s.kv_reads,
            kv_recomputed=s.kv_recomputed,
            used_blocks=s.used_blocks,
            leases_expired=s.leases_expired,
            idle=s.idle,
            integrity_error=s.integrity_error,
        )

    async def DumpKV(
        self, request: worker_pb2.DumpKVRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DumpKVResponse:
        w = self.worker
        seq, hashes = await _guard(context, w.dump_kv)
        return worker_pb2.DumpKVResponse(
            worker_id=w.worker_id,
            started_at_unix_ms=w.started_at_ms,
            seq=seq,
            block_hashes=hashes,
            block_size=w.engine.block_size,
        )


def _need_id(request_id: str) -> None:
    if not request_id:
        raise ValueError("request_id is required")


def _chunk(update: DecodeUpdate) -> worker_pb2.DecodeChunk:
    out, report = update.output, update.report
    chunk = worker_pb2.DecodeChunk(
        token_ids=out.new_token_ids,
        text=out.new_text,
        logprobs=out.new_logprobs,
        finished=out.finished,
        finish_reason=out.finish_reason or "",
        num_cached_tokens=out.num_cached_tokens,
    )
    if report is not None:
        chunk.kv_recomputed = report.recomputed
        chunk.kv_bytes_read = report.bytes_read
        chunk.kv_read_seconds = report.seconds
    return chunk
