"""What a worker reports about itself (the Stats rpc, and heartbeats): its engine's load,
its leases and reads, and optionally an audit of its block pool."""

from __future__ import annotations

from dataclasses import dataclass

from engine import Engine
from engine.output import AdmissionCounts, Lengths, StepTotals
from engine.transfer.exchange import KVSink, KVSource


@dataclass(frozen=True, slots=True)
class WorkerStats:
    running: int
    waiting: int
    num_blocks: int
    free_blocks: int
    cached_blocks: int
    used_blocks: int
    held_blocks: int
    leases: int
    leases_expired: int
    queued_prefill_tokens: int
    kv_reads: int
    kv_bytes_read: int
    kv_recomputed: int
    idle: bool
    integrity_error: str  # empty when the block pool's books balance (or not audited)
    totals: StepTotals  # what the engine computed so far, and in how long (the autoscaler's)
    lengths: Lengths = Lengths()  # of the requests it finished lately (the autoscaler's)
    running_output_p90: int = 0  # EngineLoad's (the autoscaler's)
    admissions: AdmissionCounts = AdmissionCounts()  # for its /metrics


def collect_stats(
    engine: Engine, source: KVSource | None, sink: KVSink, integrity: bool
) -> WorkerStats:
    """Engine thread: one consistent snapshot."""
    load = engine.load()
    return WorkerStats(
        running=load.running,
        waiting=load.waiting,
        num_blocks=load.num_blocks,
        free_blocks=load.free_blocks,
        cached_blocks=load.cached_blocks,
        used_blocks=load.used_blocks,
        held_blocks=load.held_blocks,
        leases=len(source.leases) if source else 0,
        leases_expired=source.leases.num_expired if source else 0,
        queued_prefill_tokens=load.queued_prefill_tokens,
        kv_reads=sink.num_reads,
        kv_bytes_read=sink.bytes_read,
        kv_recomputed=sink.num_recomputed,
        idle=load.idle,
        integrity_error=_integrity_error(engine) if integrity else "",
        totals=engine.totals.copy(),
        lengths=engine.lengths.percentiles(),
        running_output_p90=load.running_output_p90,
        admissions=engine.admission_counts(),
    )


def _integrity_error(engine: Engine) -> str:
    try:
        engine.check_integrity()
    except AssertionError as e:
        return str(e) or "block pool integrity check failed"
    return ""
