"""The edge between the engine's dataclasses and protobuf: conversion happens here only."""

from __future__ import annotations

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from engine.sampling_params import SamplingParams
from engine.transfer.exchange import KVHandle
from engine.transfer.nixl_transfer import PeerKV
from services.pb import events_pb2, worker_pb2


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


def peer_from_record(record: events_pb2.WorkerRecord) -> PeerKV:
    return PeerKV(
        agent_name=record.nixl_agent,
        metadata=record.nixl_metadata,
        base_addr=record.kv_base_addr,
        block_bytes=record.kv_block_bytes,
        num_blocks=record.num_blocks,
        device_id=record.kv_device_id,
    )
