"""What the autoscaler reads: each pool's load now, and the speeds its workers showed since
the last reading, from two readings of the worker registry.

    registry read at t0 ─┐                        ┌─> PoolLoad per pool   (load now)
                         ├─ per worker, the change ┤
    registry read at t1 ─┘  of its step counters   └─> Observations       (speeds shown)

A worker's record carries counters that only grow (engine StepTotals: prompt tokens computed,
decode steps and tokens, and the busy time of each), so the change between two readings
says what it did in between, however many heartbeats were missed; the time between is the
gap between the two heartbeats' own stamps (the worker's clock), not between the reads. A
record read again before its next heartbeat is no new reading: the worker's last one is
kept, its rate still counts, and the next heartbeat is measured against it (read at a
shorter interval than the heartbeat's, a pool's rate would otherwise read 0, then double).
A worker seen for the first time, or restarted (its counters begin again), gives load but
no speed until its next heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.pb.events_pb2 import WorkerRecord

POOLS = ("prefill", "decode", "both")  # a worker's role names its pool; `both`: colocated


@dataclass(frozen=True, slots=True)
class Reading:
    """One worker's record, and the prompt tokens per second of wall time it showed since
    the reading before."""

    record: WorkerRecord
    prefill_rate: float = 0.0

    @property
    def worker_id(self) -> str:
        return self.record.worker_id


@dataclass(frozen=True, slots=True)
class PoolLoad:
    pool: str
    workers: int
    requests: int  # running and waiting, over the pool
    queued_prefill_tokens: int  # prompt tokens accepted, not computed yet
    prefill_tokens_per_s: float  # prompt tokens the pool computed per second of wall time
    used_blocks: int
    blocks_per_worker: int
    max_num_seqs: int  # the smallest of the pool's workers
    block_size: int
    # The greatest of the workers' 90th percentiles (of the requests each finished lately):
    # percentiles do not average, and the pool's own is never above their greatest.
    prompt_p90: int
    output_p90: int
    # ... and of the outputs of the requests running now, so far (a floor under theirs)
    running_output_p90: int = 0
    # the least share of answers ending at their max_tokens among workers that finished any
    answers_at_limit: float = 0.0


@dataclass(slots=True)
class Observations:
    """Speeds shown between two readings: per-worker prompt tokens per busy second, and
    decode steps as (mean batch, mean step seconds)."""

    prefill_tok_s: dict[str, list[float]] = field(default_factory=dict)
    decode_steps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def read_pools(
    before: Mapping[str, Reading], now: Mapping[str, Reading]
) -> tuple[dict[str, PoolLoad], Observations, dict[str, Reading]]:
    """The load of every pool that has workers in `now`, what `before` -> `now` showed, and
    the readings to measure the next ones against (a worker's last new heartbeat)."""
    obs = Observations()
    members: dict[str, list[Reading]] = {}
    kept: dict[str, Reading] = {}
    for wid, cur in now.items():
        members.setdefault(cur.record.role, []).append(cur)
        kept[wid] = _measure(before.get(wid), cur, obs)
    loads = {
        pool: _pool_load(pool, rs, sum(kept[r.worker_id].prefill_rate for r in rs))
        for pool, rs in members.items()
    }
    return loads, obs, kept


def _measure(prev: Reading | None, cur: Reading, obs: Observations) -> Reading:
    """The reading to keep for this worker; what it did since `prev` goes into `obs`."""
    if prev is None or prev.record.started_at_unix_ms != cur.record.started_at_unix_ms:
        return cur  # first seen, or restarted: no change to measure yet
    dt = (cur.record.heartbeat_unix_ms - prev.record.heartbeat_unix_ms) / 1000
    if dt <= 0:
        return prev  # no heartbeat since: nothing new, the last rate stands
    pool = cur.record.role
    tokens, busy_s = _prefill_delta(prev.record, cur.record)
    if tokens > 0 and busy_s > 0:
        obs.prefill_tok_s.setdefault(pool, []).append(tokens / busy_s)
    step = _decode_delta(prev.record, cur.record)
    if step is not None:
        obs.decode_steps.setdefault(pool, []).append(step)
    return Reading(cur.record, tokens / dt)


def in_flight(r: WorkerRecord) -> tuple[int, int]:
    """How much retiring this worker would disturb, as both actuators order their victims:
    its requests running and waiting, then the blocks it holds for readers."""
    return r.running + r.waiting, r.held_blocks


def readings(records: Iterable[WorkerRecord]) -> dict[str, Reading]:
    return {r.worker_id: Reading(r) for r in records if r.role in POOLS}


def _prefill_delta(a: WorkerRecord, b: WorkerRecord) -> tuple[int, float]:
    tokens = b.prefill_tokens_total - a.prefill_tokens_total
    busy_s = (b.prefill_busy_us_total - a.prefill_busy_us_total) / 1e6
    return max(tokens, 0), max(busy_s, 0.0)


def _decode_delta(a: WorkerRecord, b: WorkerRecord) -> tuple[float, float] | None:
    steps = b.decode_steps_total - a.decode_steps_total
    if steps <= 0:
        return None
    batch = (b.decode_tokens_total - a.decode_tokens_total) / steps
    step_s = (b.decode_busy_us_total - a.decode_busy_us_total) / 1e6 / steps
    return batch, step_s


def _pool_load(pool: str, rs: list[Reading], delivered: float) -> PoolLoad:
    recs = [r.record for r in rs]
    return PoolLoad(
        pool=pool,
        workers=len(recs),
        requests=sum(r.running + r.waiting for r in recs),
        queued_prefill_tokens=sum(r.queued_prefill_tokens for r in recs),
        prefill_tokens_per_s=delivered,
        used_blocks=sum(r.used_blocks for r in recs),
        blocks_per_worker=min(r.num_blocks for r in recs),
        max_num_seqs=min((r.max_num_seqs for r in recs if r.max_num_seqs), default=0),
        block_size=max(r.block_size for r in recs),
        prompt_p90=max(r.prompt_tokens_p90 for r in recs),
        output_p90=max(r.output_tokens_p90 for r in recs),
        running_output_p90=max(r.running_output_tokens_p90 for r in recs),
        answers_at_limit=min((r.answers_at_limit for r in recs if r.output_tokens_p90), default=0),
    )
