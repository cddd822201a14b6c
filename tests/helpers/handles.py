"""KV handles after a trip over the wire: a lease deadline travels as the time left, so it
comes back a little off: earlier at the router (counted from before its call), later at a
decode worker by the trip's time (counted from the arrival; exchange.EXPIRY_MARGIN_S
covers that)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, TypeVar

from engine.transfer.exchange import KVHandle

T = TypeVar("T")


def handle(
    worker_id: str, agent: str, blocks: tuple[int, ...], tokens: int, lease: str
) -> KVHandle:
    """A handle whose lease has an hour left: still far from over when a test that made
    it at import time runs, however late."""
    return KVHandle(worker_id, agent, blocks, tokens, lease, time.monotonic() + 3600.0)


def assert_same_but_lease(got: T, want: T) -> None:
    """`got` equals `want` (a KVHandle, or a message holding one as `.handle`), its lease
    end within 0.5 s of `want`'s."""
    got_h, want_h = _handle(got), _handle(want)
    assert (got_h is None) == (want_h is None), (got, want)
    if got_h is None or want_h is None:
        assert got == want
        return
    assert abs(want_h.lease_deadline - got_h.lease_deadline) < 0.5, (got_h, want_h)
    assert _without_lease(got) == _without_lease(want)


def _handle(x: Any) -> KVHandle | None:
    return x if isinstance(x, KVHandle) else getattr(x, "handle", None)


def _without_lease(x: Any) -> Any:
    if isinstance(x, KVHandle):
        return replace(x, lease_deadline=0.0)
    return replace(x, handle=replace(x.handle, lease_deadline=0.0))
