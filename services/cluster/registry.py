"""The worker registry in Redis: one key per worker holding its `WorkerRecord` (protobuf),
with a TTL that each heartbeat renews. A worker that stops heartbeating expires and so
disappears from routing; a record whose `started_at_unix_ms` changed is a restarted
process whose NIXL metadata must be reloaded.

    tandem:worker:<worker_id>  ->  WorkerRecord bytes   (EX ttl)
"""

from __future__ import annotations

import time

import redis

from services.pb.events_pb2 import WorkerRecord

DEFAULT_TTL_S = 10.0


class Registry:
    def __init__(self, client: redis.Redis, prefix: str = "tandem") -> None:
        self._r = client
        self._prefix = f"{prefix}:worker:"

    def heartbeat(self, record: WorkerRecord, ttl_s: float = DEFAULT_TTL_S) -> None:
        """Publish (or refresh) a worker's record; it expires `ttl_s` after the last call."""
        if not record.worker_id:
            raise ValueError("a worker record needs a worker_id")
        record.heartbeat_unix_ms = int(time.time() * 1000)
        self._r.set(
            self._prefix + record.worker_id, record.SerializeToString(), px=int(ttl_s * 1000)
        )

    def remove(self, worker_id: str) -> bool:
        """A clean shutdown: drop the record now rather than waiting for the TTL."""
        return bool(self._r.delete(self._prefix + worker_id))

    def get(self, worker_id: str) -> WorkerRecord | None:
        raw = self._r.get(self._prefix + worker_id)
        return WorkerRecord.FromString(raw) if raw is not None else None

    def workers(self, role: str | None = None) -> list[WorkerRecord]:
        """Live workers sorted by id; with `role`, those that can serve it (that role or `both`)."""
        keys = sorted(self._r.scan_iter(match=self._prefix + "*", count=500))
        records = (
            [WorkerRecord.FromString(raw) for raw in self._r.mget(keys) if raw is not None]
            if keys
            else []
        )
        return [r for r in records if role is None or r.role == role or r.role == "both"]
