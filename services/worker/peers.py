"""A decode worker's view of the prefill workers it may read from, kept true by the registry.

Peers are loaded when they join (not on the first request) and reloaded when they restart:
a restarted process registers a new NIXL agent name, the old agent is removed, so a stale
agent is never used. A handle that names an agent we have not loaded yet (it joined a
moment ago) makes `ensure` look it up in the registry at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.parallel.kv import WorkerTransfer
from services.cluster.registry import Registry
from services.pb.events_pb2 import WorkerRecord
from services.wire import peer_from_record
from services.worker.engine_thread import EngineLoop

log = logging.getLogger(__name__)


class PeerWatcher:
    def __init__(
        self,
        registry: Registry,
        engine_loop: EngineLoop,
        transfer: WorkerTransfer,
        self_id: str,
    ) -> None:
        """Peers are swapped on the engine thread (`engine_loop`), between steps."""
        self.registry = registry
        self.engine_loop = engine_loop
        self.transfer = transfer
        self.self_id = self_id
        self.agents: dict[str, str] = {}  # worker id -> loaded agent name
        # worker id -> an agent we cannot read (another tensor-parallel size), refused
        # once: its handles' prompts are recomputed here, counted
        self.refused: dict[str, str] = {}

    async def refresh(self) -> None:
        records = await asyncio.to_thread(self.registry.workers)
        live = {r.worker_id: r for r in records if self._readable(r)}
        for worker_id in [w for w in self.agents if w not in live]:
            await self._remove(worker_id)
        for worker_id in [w for w in self.refused if w not in live]:
            del self.refused[worker_id]
        for record in live.values():
            if self._new(record.worker_id, record.nixl_agent):
                await self._load(record)

    async def ensure(self, worker_id: str, agent_name: str) -> None:
        """Load `worker_id` now if the handle names an agent we do not have yet."""
        if not self._new(worker_id, agent_name):
            return
        record = await asyncio.to_thread(self.registry.get, worker_id)
        if record is not None and record.nixl_agent == agent_name:
            await self._load(record)
        # Otherwise the peer is gone or restarted: the read fails and the prompt is
        # recomputed (counted), which is the right outcome for a stale handle.

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing peers from the registry failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def _new(self, worker_id: str, agent_name: str) -> bool:
        return agent_name not in (self.agents.get(worker_id), self.refused.get(worker_id))

    def _readable(self, r: WorkerRecord) -> bool:
        return r.worker_id != self.self_id and r.role != "decode" and bool(r.nixl_agent)

    async def _load(self, record: WorkerRecord) -> None:
        old = self.agents.get(record.worker_id)
        peer = peer_from_record(record)

        def swap(_: object) -> None:
            if old is not None:
                self.transfer.remove_peer(old)
            self.transfer.add_peer(peer)

        try:
            await self.engine_loop.call(swap)
        except ValueError as e:  # a peer we cannot read from (the old one is gone too)
            self.agents.pop(record.worker_id, None)
            self.refused[record.worker_id] = record.nixl_agent
            log.error("cannot read KV from %s, its prompts are recomputed: %s", record.worker_id, e)
            return
        self.agents[record.worker_id] = record.nixl_agent
        log.info("loaded NIXL peer %s (agent %s)", record.worker_id, record.nixl_agent)

    async def _remove(self, worker_id: str) -> None:
        agent = self.agents.pop(worker_id)
        await self.engine_loop.call(lambda _: self.transfer.remove_peer(agent))
        log.info("dropped NIXL peer %s (agent %s)", worker_id, agent)
