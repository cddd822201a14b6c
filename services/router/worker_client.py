"""The router's typed client of one worker: Python objects in and out (services/wire/
converts), gRPC errors as WorkerError. Prefill and Decode calls take the worker's token
stream (token_stream.py) where it offers one. Nothing past these modules sees protobuf or
grpc.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import wire
from services.cluster import worker_tls
from services.cluster.cluster_token import call_metadata
from services.pb import worker_pb2, worker_pb2_grpc
from services.router.token_stream import TokenStream
from services.router.worker_error import WorkerError


class WorkerClient:
    def __init__(
        self,
        address: str,
        token: str | None = None,
        ca: bytes | None = None,
        stream_address: str = "",
    ) -> None:
        """`token`: the cluster token, sent with every call (cluster_token.py); `ca`: the
        CA workers' certificates are checked against, for TLS (worker_tls.py);
        `stream_address`: the worker's token stream, which Prefill and Decode calls then
        take (token_stream.py); "": they go over gRPC."""
        self.address = address
        self._metadata = call_metadata(token)
        self._channel = worker_tls.channel(address, ca)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._stream = TokenStream(stream_address, token, ca) if stream_address else None

    async def prefill(self, call: wire.PrefillCall, timeout_s: float) -> wire.PrefillReply:
        if self._stream is not None:
            return await self._stream.prefill(call, timeout_s)
        called_at = time.monotonic()
        msg = await self._unary(self._stub.Prefill, call.to_pb(), timeout_s)
        return wire.PrefillReply.from_pb(msg, called_at)

    def decode(self, call: wire.DecodeCall) -> AsyncGenerator[wire.DecodeReply, None]:
        """The worker's stream. Close it (`contextlib.aclosing`) when you stop reading
        early: that cancels the call, and the worker aborts the request."""
        if self._stream is not None:
            return self._stream.decode(call)
        return self._grpc_decode(call)

    async def _grpc_decode(self, call: wire.DecodeCall) -> AsyncGenerator[wire.DecodeReply, None]:
        try:
            stream = self._stub.Decode(call.to_pb(), metadata=self._metadata)
        except grpc.aio.UsageError as e:
            raise WorkerError.of(e) from None
        try:
            async for chunk in stream:
                yield wire.DecodeReply.from_pb(chunk)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
            raise WorkerError.of(e) from None
        finally:
            stream.cancel()  # a no-op when the stream ended

    async def abort(self, request_id: str, timeout_s: float = 5.0) -> bool:
        """True when the worker still had the request."""
        msg = await self._unary(self._stub.Abort, wire.abort_to_pb(request_id), timeout_s)
        return wire.found_from_pb(msg)

    async def stats(self, timeout_s: float = 10.0) -> wire.StatsReply:
        msg = await self._unary(self._stub.Stats, worker_pb2.StatsRequest(), timeout_s)
        return wire.StatsReply.from_pb(msg)

    async def health(self, timeout_s: float = 5.0) -> wire.HealthReply:
        msg = await self._unary(self._stub.Health, worker_pb2.HealthRequest(), timeout_s)
        return wire.HealthReply.from_pb(msg)

    async def serving(self, timeout_s: float) -> bool:
        """The standard grpc.health.v1 check of the whole server: True when SERVING."""
        request = health_pb2.HealthCheckRequest(service="")
        msg = await self._unary(self._health.Check, request, timeout_s)
        return bool(msg.status == health_pb2.HealthCheckResponse.SERVING)

    async def dump_kv(self, timeout_s: float = 10.0) -> wire.KVDump:
        """The worker's whole KV cache, for a KV index's resync."""
        msg = await self._unary(self._stub.DumpKV, worker_pb2.DumpKVRequest(), timeout_s)
        return wire.KVDump.from_pb(msg)

    async def _unary(self, method: Any, msg: Any, timeout_s: float) -> Any:
        try:
            return await method(msg, timeout=timeout_s, metadata=self._metadata)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
            raise WorkerError.of(e) from None

    async def close(self, grace_s: float | None = None) -> None:
        """With a grace period, calls in flight may finish first."""
        if self._stream is not None:
            await self._stream.close(grace_s)
        await self._channel.close(grace=grace_s)
