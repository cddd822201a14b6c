"""The autoscaler's hands in a `tandem serve` cluster: worker actors added and retired.

A pool's size is its live actors (those retiring excluded). Growing adds actors without
waiting: each shows in the registry once its model is loaded. Shrinking retires first the
workers not in the registry yet (a scale-up being cancelled), then those with the fewest
requests in flight, then the fewest blocks held for readers (from their registry records).
A retired worker leaves the registry at once, so routers stop sending to it; it finishes
what it holds within `drain_s` (its streams, and its held prompts' reads: process.py),
and only then is its actor ended. A stream still open at the end resumes on another decode
worker (the router's migration), so a scale-down fails no request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from services.autoscaler.signals import in_flight
from services.cluster.pools import PoolMember, Pools, PoolSpec
from services.pb.events_pb2 import WorkerRecord

DEFAULT_DRAIN_S = 60.0
log = logging.getLogger(__name__)


class RayActuator:
    def __init__(
        self,
        pools: Pools,
        specs: Mapping[str, PoolSpec],
        read_records: Callable[[], list[WorkerRecord]],
        drain_s: float = DEFAULT_DRAIN_S,
    ) -> None:
        """`specs`: per pool, what each of its workers asks Ray for."""
        self.pools, self.specs = pools, specs
        self._read = read_records
        self.drain_s = drain_s

    def replicas(self) -> dict[str, int]:
        self.pools.reap()
        return {pool: len(self._members(pool)) for pool in self.specs}

    def scale(self, pool: str, replicas: int) -> None:
        members = self._members(pool)
        for _ in range(replicas - len(members)):
            added = self.pools.add(self.specs[pool])
            log.info("autoscaler: started %s", added.name)
        if replicas < len(members):
            load = self._load()
            for victim in _victims(members, len(members) - replicas, load):
                self.pools.retire(victim.name, self.drain_s)
                running = load.get(victim.name, (-1, 0))[0] if load is not None else -1
                state = "not serving yet" if running < 0 else f"{running} in flight"
                log.info(
                    "autoscaler: retiring %s (%s; drain up to %g s)",
                    victim.name,
                    state,
                    self.drain_s,
                )

    def _members(self, pool: str) -> list[PoolMember]:
        return [m for m in self.pools.members.values() if m.role == pool]

    def _load(self) -> dict[str, tuple[int, int]] | None:
        """Each registered worker's requests in flight, and blocks it holds for readers."""
        try:
            return {r.worker_id: in_flight(r) for r in self._read()}
        except Exception as e:
            log.warning("autoscaler: no loads to choose whom to retire (%s)", e)
            return None


def _victims(
    members: list[PoolMember], n: int, load: dict[str, tuple[int, int]] | None
) -> list[PoolMember]:
    """Those not registered yet first, then the fewest requests in flight, then the fewest
    blocks held for readers; the newest on a tie (and without figures: the newest, the
    least likely to be busy)."""
    if load is None:
        return sorted(members, key=lambda m: _index(m.name), reverse=True)[:n]
    return sorted(members, key=lambda m: (load.get(m.name, (-1, 0)), -_index(m.name)))[:n]


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])
