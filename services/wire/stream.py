"""The token stream's frames (worker.proto StreamUp / StreamDown) to and from Python.

    router                                            worker
    hello_frame(token)            --StreamUp-->       up_from_bytes() -> Hello
    decode_frame(DecodeCall)                                         -> Open (.call())
    prefill_frame(PrefillCall)                                       -> OpenPrefill (.call())
    cancel_frame(request_id)                                         -> Cancel
    down_from_bytes() -> (id, DecodeReply     <--StreamDown--  chunk_frame(id, update)
                              | Prefilled (.reply())           prefilled_frame(id, PrefillReply)
                              | StreamEnd)                     end_frame(id, code, details)

Payloads only: services/cluster/frames.py puts each in a length-prefixed frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import DecodeError

from services.pb import worker_pb2
from services.wire.rpc import (
    DecodeCall,
    DecodeReply,
    PrefillCall,
    PrefillReply,
    decode_update_to_pb,
    prefill_reply_to_pb,
)

if TYPE_CHECKING:
    from services.worker.results import DecodeUpdate

OK = "ok"
M = TypeVar("M", worker_pb2.StreamUp, worker_pb2.StreamDown)


@dataclass(frozen=True, slots=True)
class Hello:
    token: str


@dataclass(frozen=True, slots=True)
class Open:
    """A new call. Its id is known even when the rest is bad, so a refusal can name it."""

    request_id: str
    msg: worker_pb2.DecodeRequest

    def call(self) -> DecodeCall:
        """Raises ValueError for a request a well-behaved router never sends."""
        return DecodeCall.from_pb(self.msg)


@dataclass(frozen=True, slots=True)
class OpenPrefill:
    request_id: str
    msg: worker_pb2.PrefillRequest

    def call(self) -> PrefillCall:
        """Raises ValueError for a request a well-behaved router never sends."""
        return PrefillCall.from_pb(self.msg)


@dataclass(frozen=True, slots=True)
class Prefilled:
    """A prefill's answer, read when its caller knows when it called (the lease's time left
    counts from then)."""

    msg: worker_pb2.PrefillResponse

    def reply(self, called_at: float) -> PrefillReply:
        return PrefillReply.from_pb(self.msg, called_at)


@dataclass(frozen=True, slots=True)
class Cancel:
    request_id: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a call ended: OK, or a gRPC status code's name in lower case, as WorkerError's."""

    code: str
    details: str = ""


# ---- up: router -> worker ----------------------------------------------------------------
def hello_frame(token: str | None) -> bytes:
    return worker_pb2.StreamUp(hello=worker_pb2.StreamHello(token=token or "")).SerializeToString()


def decode_frame(call: DecodeCall) -> bytes:
    return worker_pb2.StreamUp(decode=call.to_pb()).SerializeToString()


def prefill_frame(call: PrefillCall) -> bytes:
    return worker_pb2.StreamUp(prefill=call.to_pb()).SerializeToString()


def cancel_frame(request_id: str) -> bytes:
    return worker_pb2.StreamUp(cancel=request_id).SerializeToString()


def up_from_bytes(payload: bytes) -> Hello | Open | OpenPrefill | Cancel:
    """Raises ValueError for bytes that are no StreamUp."""
    msg = _parse(worker_pb2.StreamUp(), payload)
    kind = msg.WhichOneof("kind")
    if kind == "hello":
        return Hello(msg.hello.token)
    if kind == "decode":
        return Open(msg.decode.request_id, msg.decode)
    if kind == "prefill":
        return OpenPrefill(msg.prefill.request_id, msg.prefill)
    if kind == "cancel":
        return Cancel(msg.cancel)
    raise ValueError("a token stream frame of no known kind")


# ---- down: worker -> router --------------------------------------------------------------
def chunk_frame(request_id: str, update: DecodeUpdate) -> bytes:
    down = worker_pb2.StreamDown(request_id=request_id, chunk=decode_update_to_pb(update))
    return down.SerializeToString()


def prefilled_frame(request_id: str, reply: PrefillReply) -> bytes:
    down = worker_pb2.StreamDown(request_id=request_id, prefill=prefill_reply_to_pb(reply))
    return down.SerializeToString()


def end_frame(request_id: str, code: str = OK, details: str = "") -> bytes:
    end = worker_pb2.StreamEnd(code=code, details=details)
    return worker_pb2.StreamDown(request_id=request_id, end=end).SerializeToString()


def down_from_bytes(payload: bytes) -> tuple[str, DecodeReply | Prefilled | StreamEnd]:
    """Raises ValueError for bytes that are no StreamDown."""
    msg = _parse(worker_pb2.StreamDown(), payload)
    kind = msg.WhichOneof("kind")
    if kind == "chunk":
        return msg.request_id, DecodeReply.from_pb(msg.chunk)
    if kind == "end":
        return msg.request_id, StreamEnd(msg.end.code, msg.end.details)
    if kind == "prefill":
        return msg.request_id, Prefilled(msg.prefill)
    raise ValueError("a token stream frame of no known kind")


def _parse(msg: M, payload: bytes) -> M:
    try:
        msg.ParseFromString(payload)
    except DecodeError as e:
        raise ValueError(f"a token stream frame that does not parse: {e}") from None
    return msg
