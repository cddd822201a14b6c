"""events.proto's messages: KV events and their batches (a worker's Redis stream), and
the registry's worker records.

These travel through Redis, not gRPC. The readers keep them as protobuf on purpose: the
router's KV index applies a batch's decoded events as they are (services/kv/index.py, at
millions of events; bench/kv_index.py measures it), and a registry record is the
registry's object (services/cluster/registry.py). What becomes Python objects, and what
Python objects become, is converted here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from engine.transfer.base import HeadSlice, PeerKV
from services.pb import events_pb2

if TYPE_CHECKING:  # the worker's type, for annotations only
    from services.worker.stats import WorkerStats


# ---- KV events ---------------------------------------------------------------------------
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


def events_batch(worker_id: str, started_at_ms: int, seq: int, events: Sequence[KVEvent]) -> bytes:
    """A stream entry: `events` (token ids left out), or a keepalive when there are none
    (`seq` is then the last event already published)."""
    batch = events_pb2.KVEventBatch(worker_id=worker_id, started_at_unix_ms=started_at_ms, seq=seq)
    batch.events.extend(event_to_pb("", e, tokens=False) for e in events)
    return batch.SerializeToString()


def snapshot_batch(worker_id: str, started_at_ms: int, seq: int, hashes: Iterable[int]) -> bytes:
    """A stream entry that replaces the worker's whole cache: every hash as of event `seq`."""
    batch = events_pb2.KVEventBatch(
        worker_id=worker_id, started_at_unix_ms=started_at_ms, seq=seq, snapshot=True
    )
    batch.block_hashes.extend(hashes)
    return batch.SerializeToString()


# ---- registry records --------------------------------------------------------------------
def worker_record(
    *,
    worker_id: str,
    role: str,
    grpc_address: str,
    stream_address: str = "",
    model: str,
    block_size: int,
    metrics_address: str = "",
    num_blocks: int,
    max_model_len: int,
    max_num_seqs: int,
    peer: PeerKV,
    started_at_unix_ms: int,
) -> events_pb2.WorkerRecord:
    """What a worker registers (its load is set by `set_load` at every heartbeat)."""
    return events_pb2.WorkerRecord(
        worker_id=worker_id,
        role=role,
        grpc_address=grpc_address,
        stream_address=stream_address,
        metrics_address=metrics_address,
        model=model,
        block_size=block_size,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        nixl_agent=peer.agent_name,
        nixl_metadata=peer.metadata,
        kv_base_addr=peer.base_addr,
        kv_block_bytes=peer.block_bytes,
        kv_device_id=peer.device_id,
        kv_heads=peer.heads.count,
        kv_head_groups=peer.heads.groups,
        nixl_ranks=[
            events_pb2.NixlRank(
                agent=r.agent_name,
                metadata=r.metadata,
                base_addr=r.base_addr,
                device_id=r.device_id,
            )
            for r in peer.followers
        ],
        started_at_unix_ms=started_at_unix_ms,
    )


def set_load(record: events_pb2.WorkerRecord, s: WorkerStats) -> None:
    """A heartbeat's load, from the worker's last stats."""
    record.free_blocks = s.free_blocks
    record.used_blocks = s.used_blocks
    record.held_blocks = s.held_blocks
    record.running = s.running
    record.waiting = s.waiting
    record.queued_prefill_tokens = s.queued_prefill_tokens
    t = s.totals
    record.prefill_steps_total = t.prefill_steps
    record.prefill_tokens_total = t.prefill_tokens
    record.prefill_busy_us_total = round(t.prefill_busy_s * 1e6)
    record.decode_steps_total = t.decode_steps
    record.decode_tokens_total = t.decode_tokens
    record.decode_busy_us_total = round(t.decode_busy_s * 1e6)
    n = s.lengths
    record.prompt_tokens_p50, record.prompt_tokens_p90 = n.prompt_p50, n.prompt_p90
    record.output_tokens_p50, record.output_tokens_p90 = n.output_p50, n.output_p90
    record.running_output_tokens_p90 = s.running_output_p90
    record.answers_at_limit = n.at_limit


def peer_from_record(record: events_pb2.WorkerRecord) -> PeerKV:
    """The inverse of `worker_record`'s `peer`: what a reader loads as a NIXL peer."""

    def rank(i: int, agent: str, metadata: bytes, base_addr: int, device_id: int) -> PeerKV:
        # every rank's blocks and head groups are alike
        n = record.kv_heads
        return PeerKV(
            agent_name=agent,
            metadata=metadata,
            base_addr=base_addr,
            block_bytes=record.kv_block_bytes,
            num_blocks=record.num_blocks,
            heads=HeadSlice(i * n, n, record.kv_head_groups),
            device_id=device_id,
        )

    own = rank(0, record.nixl_agent, record.nixl_metadata, record.kv_base_addr, record.kv_device_id)
    followers = tuple(
        rank(i, r.agent, r.metadata, r.base_addr, r.device_id)
        for i, r in enumerate(record.nixl_ranks, start=1)
    )
    return dataclasses.replace(own, followers=followers)
