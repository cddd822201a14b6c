"""The edge between Python objects and protobuf: conversion happens here only.

    router                         wire                          worker
    WorkerClient  --PrefillCall.to_pb()-->  PrefillRequest  --PrefillCall.from_pb()-->  handlers
                  <--PrefillReply.from_pb()- PrefillResponse <--prefill_reply_to_pb()--
    (Decode, Stats, DumpKV, Health, Abort alike; KV events and registry records too)

rpc.py           every rpc's request and reply (worker.proto), `to_pb` / `from_pb`
engine_types.py  the engine's types inside them: SamplingParams, KVHandle, finish reasons
events.py        events.proto: KV events and stream batches, registry records

Requests and replies are plain dataclasses with `to_pb` / `from_pb` (TGI's `Batch.from_pb`).
`from_pb` raises ValueError for what a well-behaved peer never sends (a gRPC
INVALID_ARGUMENT at the worker's edge). Import from here: `from services import wire`.
"""

from services.wire.engine_types import (
    handle_from_pb,
    handle_to_pb,
    params_from_pb,
    params_to_pb,
    reason_from_pb,
    reason_to_pb,
)
from services.wire.events import (
    event_from_pb,
    event_to_pb,
    events_batch,
    peer_from_record,
    set_load,
    snapshot_batch,
    worker_record,
)
from services.wire.rpc import (
    DecodeCall,
    DecodeReply,
    HealthReply,
    KVDump,
    PrefillCall,
    PrefillReply,
    StatsReply,
    abort_from_pb,
    abort_to_pb,
    decode_update_to_pb,
    found_from_pb,
    found_to_pb,
    prefill_reply_to_pb,
    stats_to_pb,
)

__all__ = [
    "DecodeCall",
    "DecodeReply",
    "HealthReply",
    "KVDump",
    "PrefillCall",
    "PrefillReply",
    "StatsReply",
    "abort_from_pb",
    "abort_to_pb",
    "decode_update_to_pb",
    "event_from_pb",
    "event_to_pb",
    "events_batch",
    "found_from_pb",
    "found_to_pb",
    "handle_from_pb",
    "handle_to_pb",
    "params_from_pb",
    "params_to_pb",
    "peer_from_record",
    "prefill_reply_to_pb",
    "reason_from_pb",
    "reason_to_pb",
    "set_load",
    "snapshot_batch",
    "stats_to_pb",
    "worker_record",
]
