"""The cluster token: what a caller of a worker's gRPC must show, so that reaching a
worker's port is not enough to read its KV cache (DumpKV), abort its requests or feed it
prompts. The router and the workers share it; clients of the OpenAI API never see it.

    TANDEM_CLUSTER_TOKEN        read from the environment, never from argv (a process's
                                arguments are visible to every user of the machine)
    tandem serve                makes one when the variable is unset, for its own workers
    metadata x-tandem-token     on every call; compared in constant time
    registry records            signed with it (record_signing.py): a record written by
                                someone without it is ignored

The standard grpc.health.v1 service stays open: Kubernetes' gRPC probes send no metadata,
and a health status reveals nothing.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

TOKEN_ENV = "TANDEM_CLUSTER_TOKEN"
METADATA_KEY = "x-tandem-token"
_OPEN_PREFIX = "/grpc.health.v1.Health/"


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """What a client sends with each call."""
    return ((METADATA_KEY, token),) if token else None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call without the token, health checks excepted."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(_OPEN_PREFIX) or self._shown(details):
            return handler
        return _refusal(handler)

    def _shown(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._token)
        return False


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid cluster token is required")


async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await _refuse(request, context)
    yield  # unreachable: abort raises; a generator, as a streaming handler must be


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only refuses."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(_refuse, **codec)
