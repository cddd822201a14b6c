"""The edge between the engine's dataclasses and protobuf: conversion happens here only."""

from __future__ import annotations

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from engine.sampling_params import SamplingParams
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


def event_to_pb(worker_id: str, event: KVEvent) -> events_pb2.KVEvent:
    msg = events_pb2.KVEvent(worker_id=worker_id, seq=event.seq)
    if isinstance(event, BlockStored):
        stored = msg.stored
        stored.block_hash = event.block_hash
        if event.parent_hash is not None:
            stored.parent_hash = event.parent_hash
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
