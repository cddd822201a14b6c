"""Leases on a prefill worker's held KV blocks.

A prefill worker keeps a finished prompt's blocks pinned until the decode worker has read
them. The pin is a lease: released when the reader's NIXL notification arrives, or when
the lease runs out (the reader died or gave up). The decode side throws the data away if
its read may have ended after the lease: blocks freed at expiry can be reused and
overwritten at once.

    grant ──> held ──(notify with lease id)──> released
                  └──(now >= deadline)───────> expired (counted)

No wall clock is compared across hosts: a deadline is on this process's monotonic clock,
and it travels as the time left (services/wire: each process that receives it adds the
time left to its own clock at the moment the sender's time started counting, or earlier).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    request_id: str
    deadline: float  # time.monotonic() of this process


class LeaseTable:
    def __init__(
        self, ttl_s: float = DEFAULT_LEASE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_id: dict[str, Lease] = {}
        self._by_request: dict[str, str] = {}
        self.num_expired = 0

    def grant(self, request_id: str) -> Lease:
        if request_id in self._by_request:
            raise ValueError(f"request {request_id!r} already holds a lease")
        lease = Lease(uuid.uuid4().hex, request_id, self._clock() + self.ttl_s)
        self._by_id[lease.lease_id] = lease
        self._by_request[request_id] = lease.lease_id
        return lease

    def get(self, request_id: str) -> Lease | None:
        lease_id = self._by_request.get(request_id)
        return self._by_id[lease_id] if lease_id is not None else None

    def release(self, lease_id: str) -> Lease | None:
        """End a lease (the reader is done). None if unknown or already ended."""
        lease = self._by_id.pop(lease_id, None)
        if lease is not None:
            del self._by_request[lease.request_id]
        return lease

    def release_request(self, request_id: str) -> Lease | None:
        lease_id = self._by_request.get(request_id)
        return self.release(lease_id) if lease_id is not None else None

    def pop_expired(self) -> list[Lease]:
        """End and return every lease whose time is up."""
        now = self._clock()
        expired = [lease for lease in self._by_id.values() if now >= lease.deadline]
        for lease in expired:
            self.release(lease.lease_id)
        self.num_expired += len(expired)
        return expired

    def __len__(self) -> int:
        return len(self._by_id)
