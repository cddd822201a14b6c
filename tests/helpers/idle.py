"""After a test's requests: every worker back to idle, checked over gRPC Stats."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from services.pb import worker_pb2


def assert_idle(
    stats_of_all: Callable[[], Mapping[str, worker_pb2.StatsResponse]], timeout_s: float = 10.0
) -> None:
    """Nothing running or held, no leases, the block pool's books balance (workers finish
    their clean-up a moment after the client has its last token, so wait a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = stats_of_all()
        busy = {n: s for n, s in stats.items() if not s.idle or s.leases or s.held_blocks}
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stats and not busy, busy
    assert all(not s.integrity_error for s in stats.values()), stats
