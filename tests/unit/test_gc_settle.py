"""gc_settle.settle(): start-up's garbage is collected, what survives is frozen (skipped by
every later collection), and what is allocated afterwards is collected as before."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.cluster.gc_settle import settle


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # only the cyclic collector frees these
    return weakref.ref(a)


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the session collects as it did


def test_settle_collects_start_ups_garbage_and_freezes_the_rest(thawed: None) -> None:
    garbage = _cycle()
    kept = _Node()
    settle()
    assert garbage() is None
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen objects are not tracked
    later = _cycle()
    gc.collect()
    assert later() is None
