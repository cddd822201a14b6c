"""The worker registry in Redis: one key per worker holding its `WorkerRecord` (protobuf),
signed with the cluster token (record_signing.py), with a TTL that each heartbeat renews.
A worker that stops heartbeating expires and so disappears from routing; a record whose
`started_at_unix_ms` changed is a restarted process whose NIXL metadata must be reloaded.

    tandem:worker:<worker_id>  ->  VERSION | HMAC | WorkerRecord bytes   (EX ttl)

A record that does not verify (written by someone without the token) is skipped by every
reader, as if absent: counted (`on_rejected`) and logged at most once a minute, since
readers poll the registry every fraction of a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from services.cluster.record_signing import sign, signing_key, verify
from services.pb.events_pb2 import WorkerRecord

DEFAULT_TTL_S = 10.0
REJECTION_LOG_EVERY_S = 60.0
log = logging.getLogger(__name__)


class Registry:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "tandem",
        *,
        token: str | None = None,
        on_rejected: Callable[[], None] = lambda: None,
    ) -> None:
        """`token`: the cluster token records are signed and checked with (None: the
        cluster has none, see record_signing.py); `on_rejected` hears of each record read
        that did not verify."""
        self._r = client
        self._prefix = f"{prefix}:worker:"
        self._key = signing_key(token)
        self._on_rejected = on_rejected
        self._unlogged = 0  # rejections since the last line about them
        self._logged_at = -REJECTION_LOG_EVERY_S

    def heartbeat(self, record: WorkerRecord, ttl_s: float = DEFAULT_TTL_S) -> None:
        """Publish (or refresh) a worker's record; it expires `ttl_s` after the last call."""
        if not record.worker_id:
            raise ValueError("a worker record needs a worker_id")
        record.heartbeat_unix_ms = int(time.time() * 1000)
        value = sign(self._key, record.SerializeToString())
        self._r.set(self._prefix + record.worker_id, value, px=int(ttl_s * 1000))

    def remove(self, worker_id: str) -> bool:
        """A clean shutdown: drop the record now rather than waiting for the TTL."""
        return bool(self._r.delete(self._prefix + worker_id))

    def get(self, worker_id: str) -> WorkerRecord | None:
        key = self._prefix + worker_id
        return self._parse(key, self._r.get(key))

    def workers(self, role: str | None = None) -> list[WorkerRecord]:
        """Live workers sorted by id; with `role`, those that can serve it (that role or `both`)."""
        keys = sorted(self._r.scan_iter(match=self._prefix + "*", count=500))
        values = self._r.mget(keys) if keys else []
        records = [r for r in map(self._parse, keys, values) if r is not None]
        return [r for r in records if role is None or r.role == role or r.role == "both"]

    def _parse(self, key: str | bytes, value: bytes | str | None) -> WorkerRecord | None:
        if value is None:  # expired between SCAN and MGET, or never there
            return None
        # str only from a client that decodes replies, which no record survives
        payload = verify(self._key, value if isinstance(value, bytes) else value.encode())
        if payload is None:
            self._rejected(key)
            return None
        return WorkerRecord.FromString(payload)

    def _rejected(self, key: str | bytes) -> None:
        self._on_rejected()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REJECTION_LOG_EVERY_S:
            log.warning(
                "ignored %d read(s) of registry records not signed with this cluster's "
                "token since the last report (latest: %r): a forgery, or a process with "
                "another TANDEM_CLUSTER_TOKEN",
                self._unlogged,
                key,
            )
            self._unlogged, self._logged_at = 0, now
