"""The engine's own types that ride inside rpc messages: SamplingParams, KVHandle, and a
finish reason as the wire's string."""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from engine.transfer.exchange import KVHandle
from services.pb import worker_pb2


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


def reason_to_pb(finish_reason: str | None) -> str:
    """A finish reason (a str, or engine's FinishReason, a StrEnum) as the wire's string:
    empty while the request goes on."""
    return str(finish_reason) if finish_reason else ""


def reason_from_pb(reason: str) -> str | None:
    return reason or None
