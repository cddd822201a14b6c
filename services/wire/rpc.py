"""Every rpc's request and reply (worker.proto) as a dataclass, with `to_pb` / `from_pb`.

The router builds the calls and reads the replies; the worker reads the calls and answers
with the same reply types (a prefill's `PrefillReply`) or its own results (a decode's
`DecodeUpdate`, services/worker/results.py) through the `*_to_pb` functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from engine.request import StartTiming, TopLogprobs
from engine.sampling_params import SamplingParams
from engine.transfer.exchange import KVHandle
from services.pb import worker_pb2
from services.wire.engine_types import (
    handle_from_pb,
    handle_to_pb,
    params_from_pb,
    params_to_pb,
    reason_from_pb,
    reason_to_pb,
    start_from_pb,
    start_to_pb,
    top_from_pb,
    top_to_pb,
)

if TYPE_CHECKING:  # the worker's types, for annotations only: the router must not load them
    from services.worker.results import DecodeUpdate
    from services.worker.stats import WorkerStats


# ---- requests --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PrefillCall:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str = ""

    def to_pb(self) -> worker_pb2.PrefillRequest:
        return worker_pb2.PrefillRequest(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            params=params_to_pb(self.params),
            cache_salt=self.cache_salt,
        )

    @classmethod
    def from_pb(cls, msg: worker_pb2.PrefillRequest) -> PrefillCall:
        return cls(
            _need_id(msg.request_id),
            list(msg.prompt_token_ids),
            params_from_pb(msg.params),
            msg.cache_salt,
        )


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
    cache_salt: str = ""

    def to_pb(self) -> worker_pb2.DecodeRequest:
        msg = worker_pb2.DecodeRequest(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            params=params_to_pb(self.params),
            generated_token_ids=self.generated_token_ids,
            cache_salt=self.cache_salt,
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
            msg.cache_salt,
        )


def abort_to_pb(request_id: str) -> worker_pb2.AbortRequest:
    return worker_pb2.AbortRequest(request_id=request_id)


def abort_from_pb(msg: worker_pb2.AbortRequest) -> str:
    """The request to abort (an unknown or empty id is simply not found)."""
    return msg.request_id


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
    first_top_logprobs: TopLogprobs = ()
    start: StartTiming | None = None

    @classmethod
    def from_pb(cls, msg: worker_pb2.PrefillResponse, called_at: float) -> PrefillReply:
        """`called_at`: when the call began (monotonic). The lease's time left counts from
        then: the worker sent it later, so the lease can only end later than we think."""
        return cls(
            msg.first_token,
            msg.first_logprob if msg.HasField("first_logprob") else None,
            msg.num_cached_tokens,
            reason_from_pb(msg.finish_reason),
            handle_from_pb(msg.kv, since=called_at) if msg.HasField("kv") else None,
            top_from_pb(msg.first_top_logprobs),
            start_from_pb(msg.start) if msg.HasField("start") else None,
        )


def prefill_reply_to_pb(res: PrefillReply) -> worker_pb2.PrefillResponse:
    msg = worker_pb2.PrefillResponse(
        first_token=res.first_token,
        num_cached_tokens=res.num_cached_tokens,
        finish_reason=reason_to_pb(res.finish_reason),
    )
    if res.first_logprob is not None:
        msg.first_logprob = res.first_logprob
    if res.first_top_logprobs:
        msg.first_top_logprobs.CopyFrom(top_to_pb(res.first_top_logprobs))
    if res.handle is not None:
        msg.kv.CopyFrom(handle_to_pb(res.handle))
    if res.start is not None:
        msg.start.CopyFrom(start_to_pb(res.start))
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
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    start: StartTiming | None = None  # on the chunk with the first token sampled there
    prompt_logprobs: list[float] = field(default_factory=list)  # on the first, when asked
    prompt_top_logprobs: list[TopLogprobs] = field(default_factory=list)

    @classmethod
    def from_pb(cls, msg: worker_pb2.DecodeChunk) -> DecodeReply:
        return cls(
            list(msg.token_ids),
            list(msg.logprobs),
            msg.finished,
            reason_from_pb(msg.finish_reason),
            msg.num_cached_tokens,
            msg.kv_recomputed,
            msg.kv_bytes_read,
            msg.kv_read_seconds,
            [top_from_pb(t) for t in msg.top_logprobs],
            start_from_pb(msg.start) if msg.HasField("start") else None,
            list(msg.prompt_logprobs),
            [top_from_pb(t) for t in msg.prompt_top_logprobs],
        )


def decode_update_to_pb(update: DecodeUpdate) -> worker_pb2.DecodeChunk:
    out, report = update.output, update.report
    chunk = worker_pb2.DecodeChunk(
        token_ids=out.new_token_ids,
        logprobs=out.new_logprobs,
        finished=out.finished,
        finish_reason=reason_to_pb(out.finish_reason),
        num_cached_tokens=out.num_cached_tokens,
        top_logprobs=[top_to_pb(t) for t in out.new_top_logprobs],
        prompt_logprobs=out.prompt_logprobs,
        prompt_top_logprobs=[top_to_pb(t) for t in out.prompt_top_logprobs],
    )
    if out.start is not None:
        chunk.start.CopyFrom(start_to_pb(out.start))
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


def _need_id(request_id: str) -> str:
    if not request_id:
        raise ValueError("request_id is required")
    return request_id
