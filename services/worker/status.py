"""What a worker's call failed with, as a gRPC status code: one table for its two edges,
the gRPC servicer (servicer.py) and the token stream (token_stream.py).

ValueError (bad input)           -> INVALID_ARGUMENT
RoleError (wrong kind of worker) -> FAILED_PRECONDITION
Overloaded (waiting queue full)  -> RESOURCE_EXHAUSTED
EngineDead, Leaving              -> UNAVAILABLE
"""

from __future__ import annotations

import grpc

from services.worker.core import Overloaded, RoleError
from services.worker.engine_thread import EngineDead
from services.worker.handlers import Leaving

CODES: dict[type[Exception], grpc.StatusCode] = {
    ValueError: grpc.StatusCode.INVALID_ARGUMENT,
    RoleError: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineDead: grpc.StatusCode.UNAVAILABLE,
    Leaving: grpc.StatusCode.UNAVAILABLE,
}
KNOWN = tuple(CODES)  # for `except KNOWN`


def code_of(e: Exception) -> grpc.StatusCode:
    """The code of `e`, one of KNOWN's."""
    return next(c for t, c in CODES.items() if isinstance(e, t))
