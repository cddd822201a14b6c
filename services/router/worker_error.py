"""A worker's call that failed, by its gRPC status code's name: what the router's fallbacks
(retry, resume elsewhere, a client's 4xx) decide on, whichever edge the call took (gRPC,
worker_client.py, or the token stream, token_stream.py)."""

from __future__ import annotations

import grpc


class WorkerError(Exception):
    """A call failed. `code` is the gRPC status name in lower case ("unavailable",
    "deadline_exceeded", ...): the label fallbacks are counted under."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    @property
    def rejected(self) -> bool:
        """The worker refused the request itself (bad input): the client's fault."""
        return self.code == "invalid_argument"

    @property
    def busy(self) -> bool:
        """The worker's waiting queue is full: it is healthy, another may take the call."""
        return self.code == "resource_exhausted"

    @classmethod
    def of(cls, e: grpc.aio.AioRpcError | grpc.aio.UsageError) -> WorkerError:
        if isinstance(e, grpc.aio.UsageError):  # our channel to it is closed: it left
            return cls("closed", str(e))
        return cls(e.code().name.lower(), e.details() or "")
