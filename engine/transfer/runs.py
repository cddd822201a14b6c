"""Coalesce a block-to-block copy into runs, so each run is one transfer descriptor.

    local:  [7, 8, 9, 2]      runs: (7 <- 40, 3 blocks), (2 <- 12, 1 block)
    remote: [40, 41, 42, 12]

A run continues while both the local and the remote ids go up by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Run:
    local_start: int
    remote_start: int
    count: int


def coalesce(local: Sequence[int], remote: Sequence[int]) -> list[Run]:
    if len(local) != len(remote):
        raise ValueError(f"{len(local)} local blocks but {len(remote)} remote blocks")
    runs: list[Run] = []
    for lo, re in zip(local, remote, strict=True):
        last = runs[-1] if runs else None
        if last and lo == last.local_start + last.count and re == last.remote_start + last.count:
            runs[-1] = Run(last.local_start, last.remote_start, last.count + 1)
        else:
            runs.append(Run(lo, re, 1))
    return runs
