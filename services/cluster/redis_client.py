"""How every Tandem process connects to the cluster's Redis: never without timeouts.

redis-py waits forever by default. A Redis that stops answering without closing its
connections (a frozen process, a host cut off by a firewall that drops packets) would hang
a router's registry refresh, a worker's heartbeat or a peer lookup for as long as TCP keeps
trying: minutes. With these bounds a call fails in seconds; each caller's loop logs the
failure and keeps what it last knew (the router its workers, a worker its peers), and its
next round reconnects by itself once Redis is back.

    one call  <=  CONNECT_TIMEOUT_S (a new connection)  +  SOCKET_TIMEOUT_S (each reply)
    SOCKET_TIMEOUT_S  >  the longest blocking command we send (the KV feed's XREAD BLOCK 100 ms)

No retries inside a call: every caller already runs in a loop, and redis-py nests its retry
(around the command, the connect and the connect's health check), so one retry there
stretched a call against a frozen Redis from 4 s to 16.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 2.0


def _options(socket_timeout_s: float) -> dict[str, Any]:
    return {
        "socket_connect_timeout": min(CONNECT_TIMEOUT_S, socket_timeout_s),
        "socket_timeout": socket_timeout_s,
    }


def connect(url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_options(socket_timeout_s))


def connect_async(url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> aioredis.Redis:
    retry = AsyncRetry(NoBackoff(), 0)
    return aioredis.Redis.from_url(url, retry=retry, **_options(socket_timeout_s))
