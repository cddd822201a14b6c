"""The edge between Python objects and protobuf: conversion happens here only.

    router                         wire                          worker
    WorkerClient  --PrefillCall.to_pb()-->  PrefillRequest  --PrefillCall.from_pb()-->  handlers
                  <--PrefillReply.from_pb()- PrefillResponse <--prefill_result_to_pb()--
    (Decode, Stats, DumpKV, Health, Abort alike; KV events and registry records too)

Requests and replies are plain dataclasses with `to_pb` / `from_pb` (TGI's `Batch.from_pb`).
The worker's own results (services/worker/core.py) go out through the `*_to_pb` functions:
the router never imports the worker, so its side of a reply is a type of its own here.
`from_pb` raises ValueError for what a well-behaved peer never sends (a gRPC
INVALID_ARGUMENT at the worker's edge).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from engine.sampling_params import SamplingParams
from engine.transfer.base import PeerKV
from engine.transfer.exchange import KVHandle
from services.pb import events_pb2, worker_pb2

if TYPE_CHECKING:  # the worker's types, for annotations only: the router must not load them
    from services.worker.core import DecodeUpdate, PrefillResult, WorkerStats


# ---- requests --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PrefillCall:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams

    def to_pb(self) -> worker_pb2.PrefillRequest:
        return worker_pb2.PrefillRequest(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            params=params_to_pb(self.params),
        )

    @classmethod
    def from_pb(cls, msg: worker_pb2.PrefillRequest) -> PrefillCall:
        return cls(_need_id(msg.request_id), list(msg.prompt_token_ids), params_from_pb(msg.params))


@dataclass(frozen=True, slots=True)
class DecodeCall:
    """With `handle`, the prompt's KV is read from the prefill worker it names, and
    `first_token` (that worker's sample, already sent to the client) is not repeated."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    handle: KVHandle | None = None
    first_token: int | None = None
    generated_token_ids: list[int] = field(default_factory=list)  # a migrated request

    def to_pb(self) -> worker_pb2.DecodeRequest:
        msg = worker_pb2.DecodeRequest(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            params=params_to_pb(self.params),
            generated_token_ids=self.generated_token_ids,
        )
        if self.handle is not None:
            msg.kv.CopyFrom(handle_to_pb(self.handle))
        if self.first_token is not None:
            msg.first_token = self.first_token
        return msg

    @classmethod
    def from_pb(cls, msg: worker_pb2.DecodeRequest) -> DecodeCall:
        request_id = _need_id(msg.request_id)
        params = params_from_pb(msg.params)
        return cls(
            request_id,
            list(msg.prompt_token_ids),
            params,
            handle_from_pb(msg.kv) if msg.HasField("kv") else None,
            msg.first_token if msg.HasField("first_token") else None,
            list(msg.generated_token_ids),
        )


def abort_to_pb(request_id: str) -> worker_pb2.AbortRequest:
    return worker_pb2.AbortRequest(request_id=request_id)


def found_to_pb(found: bool) -> worker_pb2.AbortResponse:
    """Abort's answer: whether the worker still had the request."""
    return worker_pb2.AbortResponse(found=found)


def found_from_pb(msg: worker_pb2.AbortResponse) -> bool:
    return msg.found


# ---- replies ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PrefillReply:
    first_token: int
    first_logprob: float | None
    num_cached_tokens: int
    finish_reason: str | None  # set when the first token already ends the request
    handle: KVHandle | None  # None when finished: nothing is held

    @classmethod
    def from_pb(cls, msg: worker_pb2.PrefillResponse) -> PrefillReply:
        return cls(
            msg.first_token,
            msg.first_logprob if msg.HasField("first_logprob") else None,
            msg.num_cached_tokens,
            msg.finish_reason or None,
            handle_from_pb(msg.kv) if msg.HasField("kv") else None,
        )


def prefill_result_to_pb(res: PrefillResult) -> worker_pb2.PrefillResponse:
    msg = worker_pb2.PrefillResponse(
        first_token=res.first_token,
        num_cached_tokens=res.num_cached_tokens,
        finish_reason=_reason(res.finish_reason),
    )
    if res.first_logprob is not None:
        msg.first_logprob = res.first_logprob
    if res.handle is not None:
        msg.kv.CopyFrom(handle_to_pb(res.handle))
    return msg


@dataclass(frozen=True, slots=True)
class DecodeReply:
    """One chunk of a Decode stream: token ids only (the router owns the text). The
    transfer fields are set on the first chunk of a request whose KV was remote."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int  # prompt tokens found in this worker's prefix cache
    kv_recomputed: bool = False  # the read failed or its lease may have expired
    kv_bytes_read: int = 0
    kv_read_seconds: float = 0.0

    @classmethod
    def from_pb(cls, msg: worker_pb2.DecodeChunk) -> DecodeReply:
        return cls(
            list(msg.token_ids),
            list(msg.logprobs),
            msg.finished,
            msg.finish_reason or None,
            msg.num_cached_tokens,
            msg.kv_recomputed,
            msg.kv_bytes_read,
            msg.kv_read_seconds,
        )


def decode_update_to_pb(update: DecodeUpdate) -> worker_pb2.DecodeChunk:
    out, report = update.output, update.report
    chunk = worker_pb2.DecodeChunk(
        token_ids=out.new_token_ids,
        logprobs=out.new_logprobs,
        finished=out.finished,
        finish_reason=_reason(out.finish_reason),
        num_cached_tokens=out.num_cached_tokens,
    )
    if report is not None:
        chunk.kv_recomputed = report.recomputed
        chunk.kv_bytes_read = report.bytes_read
        chunk.kv_read_seconds = report.seconds
    return chunk


@dataclass(frozen=True, slots=True)
class StatsReply:
    """A worker's Stats: its load, KV pool and transfer counters (see worker.proto)."""

    running: int
    waiting: int
    num_blocks: int
    free_blocks: int
    cached_blocks: int
    held_blocks: int
    leases: int
    kv_bytes_read: int
    kv_reads: int
    kv_recomputed: int
    used_blocks: int
    leases_expired: int
    idle: bool
    integrity_error: str

    @classmethod
    def from_pb(cls, msg: worker_pb2.StatsResponse) -> StatsReply:
        return cls(**{f: getattr(msg, f) for f in _STATS_FIELDS})


_STATS_FIELDS = tuple(f.name for f in fields(StatsReply))


def stats_to_pb(s: WorkerStats) -> worker_pb2.StatsResponse:
    """The worker's stats carry more than the rpc does (its heartbeat reads those)."""
    return worker_pb2.StatsResponse(**{f: getattr(s, f) for f in _STATS_FIELDS})


@dataclass(frozen=True, slots=True)
class HealthReply:
    ok: bool
    worker_id: str
    role: str

    def to_pb(self) -> worker_pb2.HealthResponse:
        return worker_pb2.HealthResponse(ok=self.ok, worker_id=self.worker_id, role=self.role)

    @classmethod
    def from_pb(cls, msg: worker_pb2.HealthResponse) -> HealthReply:
        return cls(msg.ok, msg.worker_id, msg.role)


@dataclass(frozen=True, slots=True)
class KVDump:
    """A worker's whole KV cache as of event `seq`: what a KV index resyncs from."""

    worker_id: str
    started_at_unix_ms: int
    seq: int  # the last KV event this dump includes
    block_hashes: list[int]
    block_size: int

    def to_pb(self) -> worker_pb2.DumpKVResponse:
        return worker_pb2.DumpKVResponse(
            worker_id=self.worker_id,
            started_at_unix_ms=self.started_at_unix_ms,
            seq=self.seq,
            block_hashes=self.block_hashes,
            block_size=self.block_size,
        )

    @classmethod
    def from_pb(cls, msg: worker_pb2.DumpKVResponse) -> KVDump:
        return cls(
            msg.worker_id, msg.started_at_unix_ms, msg.seq, list(msg.block_hashes), msg.block_size
        )


# ---- parts -----------------------------------------------------------------------------
def params_to_pb(p: SamplingParams) -> worker_pb2.SamplingParams:
    msg = worker_pb2.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        logprobs=p.logprobs,
    )
    if p.seed is not None:
        msg.seed = p.seed
    return msg


def params_from_pb(msg: worker_pb2.SamplingParams) -> SamplingParams:
    """Raises ValueError (a gRPC INVALID_ARGUMENT at the server edge) for bad values."""
    return SamplingParams(
        max_tokens=msg.max_tokens,
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
        logprobs=msg.logprobs,
    )


def handle_to_pb(h: KVHandle) -> worker_pb2.KVHandle:
    return worker_pb2.KVHandle(
        worker_id=h.worker_id,
        nixl_agent=h.agent_name,
        block_ids=list(h.block_ids),
        num_tokens=h.num_tokens,
        lease_id=h.lease_id,
        lease_expiry_unix_ms=h.lease_expiry_unix_ms,
    )


def handle_from_pb(msg: worker_pb2.KVHandle) -> KVHandle:
    if not msg.nixl_agent or not msg.lease_id:
        raise ValueError("a KV handle needs a NIXL agent name and a lease id")
    return KVHandle(
        worker_id=msg.worker_id,
        agent_name=msg.nixl_agent,
        block_ids=tuple(msg.block_ids),
        num_tokens=msg.num_tokens,
        lease_id=msg.lease_id,
        lease_expiry_unix_ms=msg.lease_expiry_unix_ms,
    )


def _reason(finish_reason: str | None) -> str:
    """A finish reason (a str, or engine's FinishReason, a StrEnum) as the wire's string."""
    return str(finish_reason) if finish_reason else ""


def _need_id(request_id: str) -> str:
    if not request_id:
        raise ValueError("request_id is required")
    return request_id


# ---- KV events and registry records (Redis, not gRPC) -----------------------------------
def event_to_pb(worker_id: str, event: KVEvent, tokens: bool = True) -> events_pb2.KVEvent:
    """`tokens=False` leaves out a stored block's token ids: a chained hash already names
    the whole prefix, and the ids would be most of the bytes on the wire."""
    msg = events_pb2.KVEvent(worker_id=worker_id, seq=event.seq)
    if isinstance(event, BlockStored):
        stored = msg.stored
        stored.block_hash = event.block_hash
        if event.parent_hash is not None:
            stored.parent_hash = event.parent_hash
        if tokens:
            stored.token_ids.extend(event.token_ids)
        stored.block_id = event.block_id
    elif isinstance(event, BlockRemoved):
        msg.removed.block_hash = event.block_hash
        msg.removed.block_id = event.block_id
    elif isinstance(event, AllBlocksCleared):
        msg.cleared.SetInParent()
    return msg


def event_from_pb(msg: events_pb2.KVEvent) -> KVEvent:
    kind = msg.WhichOneof("kind")
    if kind == "stored":
        s = msg.stored
        parent = s.parent_hash if s.HasField("parent_hash") else None
        return BlockStored(msg.seq, s.block_hash, parent, tuple(s.token_ids), s.block_id)
    if kind == "removed":
        return BlockRemoved(msg.seq, msg.removed.block_hash, msg.removed.block_id)
    if kind == "cleared":
        return AllBlocksCleared(msg.seq)
    raise ValueError(f"KV event {msg.seq} from {msg.worker_id!r} has no kind")


def peer_from_record(record: events_pb2.WorkerRecord) -> PeerKV:
    return PeerKV(
        agent_name=record.nixl_agent,
        metadata=record.nixl_metadata,
        base_addr=record.kv_base_addr,
        block_bytes=record.kv_block_bytes,
        num_blocks=record.num_blocks,
        device_id=record.kv_device_id,
    )
