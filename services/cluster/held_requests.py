"""Requests the routers hold because the pool that would serve them has no worker (the
whole cluster scaled to zero): each router's count in Redis, summed by the autoscaler,
which starts a first worker for them (services/router/cold_start.py holds them).

    tandem:held:<router_id>  ->  count   (PX ttl: renewed while the router holds any,
                                          deleted when it holds none)

A router that dies holding requests leaves a count that lapses with its TTL, so a dead
router never keeps a pool up. The count is not signed as worker records are: the worst a
forged one can do is start the pool's first worker, and writing it needs Redis's password.
"""

from __future__ import annotations

import redis

DEFAULT_TTL_S = 10.0


class HeldRequests:
    def __init__(self, client: redis.Redis, prefix: str = "tandem") -> None:
        self._r = client
        self._prefix = f"{prefix}:held:"

    def publish(self, router_id: str, count: int, ttl_s: float = DEFAULT_TTL_S) -> None:
        key = self._prefix + router_id
        if count > 0:
            self._r.set(key, count, px=int(ttl_s * 1000))
        else:
            self._r.delete(key)

    def total(self) -> int:
        """Requests held by every router, now."""
        keys = list(self._r.scan_iter(match=self._prefix + "*", count=500))
        if not keys:
            return 0
        return sum(int(v) for v in self._r.mget(keys) if v is not None)
