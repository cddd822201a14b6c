from __future__ import annotations

import pytest

from engine.transfer.leases import LeaseTable


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


def test_grant_release_and_expiry() -> None:
    clock = Clock()
    table = LeaseTable(ttl_s=2.0, clock=clock)
    a, b = table.grant("a"), table.grant("b")
    assert a.deadline == 1002.0 and a.lease_id != b.lease_id
    assert table.get("a") == a and len(table) == 2
    with pytest.raises(ValueError, match="already holds"):
        table.grant("a")

    assert table.release(a.lease_id) == a
    assert table.release(a.lease_id) is None  # a second notification is harmless
    assert table.get("a") is None

    clock.s = 1001.999
    assert table.pop_expired() == []
    clock.s = 1002.0
    assert table.pop_expired() == [b]
    assert len(table) == 0 and table.num_expired == 1
    assert table.release_request("b") is None


def test_release_by_request_and_bad_ttl() -> None:
    table = LeaseTable(ttl_s=1.0, clock=Clock())
    lease = table.grant("r")
    assert table.release_request("r") == lease and len(table) == 0
    with pytest.raises(ValueError, match="positive"):
        LeaseTable(ttl_s=0)
