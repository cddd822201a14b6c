"""KV-cache transfer over NIXL: one-sided READs of a peer's registered KV memory.

Each worker registers its whole KV cache once at start and publishes a `PeerKV` (agent
name, NIXL metadata, base address, block size in bytes, the KV heads it holds). A reader
loads a peer's metadata when the peer joins (`add_peer`), and again when it restarts: a
re-added name replaces the old agent, so a restarted peer is never read through stale
connection state.

The cache is block-major ([blocks, layers, 2, block, heads, dim]; in head groups, one such
cache a group: engine/transfer/heads.py), so a block of a group is one contiguous region
and a run of adjacent blocks one descriptor. A reader of a peer with another number of
tensor-parallel ranks reads each of its head groups from the peer rank that holds it:
one descriptor per run and group, one NIXL transfer per peer rank read.

A READ of our memory completes only as our agent progresses (UCX answers the reader from
inside our calls), and so does its notification. Without NIXL's progress thread (which
spins a core) the owner progresses it by calling `notifications()` or `progress()`; a
worker whose engine thread is inside a long step does so from a thread of its own while
readers are expected (engine/transfer/progress.py). Every call into the agent holds one
lock, so the two threads never meet inside it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.transfer.base import PeerKV, ReadResult, TransferError, wait
from engine.transfer.heads import HeadSlice, Source, plan_sources
from engine.transfer.nixl_read import Descriptors, NixlRead
from engine.transfer.runs import Run, coalesce

__all__ = ["NixlKVTransfer", "PeerKV", "ReadResult", "TransferError"]


@dataclass(frozen=True, slots=True)
class _Peer:
    sources: list[Source]  # where each of our head groups is read from
    ranks: dict[str, PeerKV]  # the peer's ranks we read, by agent name


class NixlKVTransfer:
    def __init__(
        self,
        name: str,
        kv_cache: torch.Tensor,
        progress_thread: bool = True,
        heads: HeadSlice | None = None,
    ) -> None:
        """`kv_cache`: block-major, [num_blocks, ...]; with `heads` in several groups,
        [groups, num_blocks, ...]. `heads` None: all of one group, as many as the
        second-to-last dimension says (a whole model's cache)."""
        # A process whose memory is read must progress its agent to answer a reader's
        # connection set-up and to receive notifications: either NIXL's progress thread
        # (which spins without pause: a core per process) or regular notifications()
        # calls, which is what workers do from their engine loop.
        from nixl._api import nixl_agent, nixl_agent_config

        if not kv_cache.is_contiguous():
            raise ValueError("the KV cache must be one contiguous allocation")
        self.name = name
        self.kv_cache = kv_cache
        self.heads = heads or HeadSlice(0, kv_cache.shape[-2])
        group = kv_cache if self.heads.groups == 1 else kv_cache[0]
        self.num_blocks = group.shape[0]
        self.block_bytes = group[0].numel() * kv_cache.element_size()
        self.mem_type = "VRAM" if kv_cache.is_cuda else "DRAM"
        self.device_id = kv_cache.device.index or 0
        config = nixl_agent_config(enable_prog_thread=progress_thread, backends=["UCX"])
        self._agent: Any = nixl_agent(name, config)
        self._registration = self._agent.register_memory(kv_cache)
        self._peers: dict[str, _Peer] = {}  # by the peer's rank 0 agent name
        self._lock = threading.Lock()  # around every call into the agent
        self._pending: dict[str, list[bytes]] = {}  # notifications `progress()` took

    def describe(self) -> PeerKV:
        return PeerKV(
            agent_name=self.name,
            metadata=self._metadata(),
            base_addr=self.kv_cache.data_ptr(),
            block_bytes=self.block_bytes,
            num_blocks=self.num_blocks,
            heads=self.heads,
            device_id=self.device_id,
        )

    def _metadata(self) -> bytes:
        with self._lock:
            metadata: bytes = self._agent.get_agent_metadata()
        return metadata

    # ---- peers ---------------------------------------------------------------------
    def add_peer(self, peer: PeerKV) -> None:
        """Load (or reload, after a restart) the agents of the peer's ranks that hold our
        heads. Raises ValueError when its blocks or head groups do not match ours."""
        ranks = {r.agent_name: r for r in peer.ranks()}
        sources = plan_sources(self.heads, [(name, r.heads) for name, r in ranks.items()])
        used = {s.agent: ranks[s.agent] for s in sources}
        for rank in used.values():
            if rank.block_bytes != self.block_bytes:
                raise ValueError(
                    f"peer {rank.agent_name} has {rank.block_bytes}-byte blocks (a head "
                    f"group's), we have {self.block_bytes}"
                )
        if peer.agent_name in self._peers:
            self.remove_peer(peer.agent_name)
        loaded: list[str] = []
        try:
            with self._lock:
                for name, rank in used.items():
                    self._agent.add_remote_agent(rank.metadata)
                    loaded.append(name)
                    # Connect now, while the peer has just joined (and is idle): a first
                    # READ would otherwise wait for its wire-up, which a busy peer answers
                    # late.
                    self._agent.make_connection(name)
        except Exception:
            with self._lock:
                for name in loaded:
                    self._agent.remove_remote_agent(name)
            raise
        self._peers[peer.agent_name] = _Peer(sources, used)

    def remove_peer(self, agent_name: str) -> None:
        peer = self._peers.pop(agent_name, None)
        if peer is not None:
            with self._lock:
                for name in peer.ranks:
                    self._agent.remove_remote_agent(name)

    # ---- reads ---------------------------------------------------------------------
    def read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        timeout_s: float = 10.0,
        notify: bytes = b"",
    ) -> ReadResult:
        """A read polled to its end (tests, benchmarks); workers poll from their loop."""
        return wait(self.start_read(peer_name, remote_blocks, local_blocks, notify), timeout_s)

    def start_read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        notify: bytes = b"",
    ) -> NixlRead:
        """Post READs of the peer's `remote_blocks` into our `local_blocks`, one descriptor
        per run of adjacent blocks and head group. `notify` reaches the peer's rank 0 once
        every part has ended."""
        peer = self._peers.get(peer_name)
        if peer is None:
            raise TransferError(f"unknown peer {peer_name!r}: add_peer() it first")
        remote_limit = min(r.num_blocks for r in peer.ranks.values())
        if any(not 0 <= b < remote_limit for b in remote_blocks):
            raise TransferError(
                f"remote block id out of range for {peer_name} ({remote_limit} blocks)"
            )
        if any(not 0 <= b < self.num_blocks for b in local_blocks):
            raise TransferError(f"local block id out of range ({self.num_blocks} blocks)")
        runs = coalesce(local_blocks, remote_blocks)
        # One transfer a peer rank; the note rides the transfer where there is one, to the
        # peer's rank 0, else it is sent once all have ended (engine/parallel/kv.py says
        # why: the peer's lease must outlive every read of its blocks).
        alone = set(peer.ranks) == {peer_name}
        read = NixlRead(self._agent, self._lock, peer_name, b"" if alone else notify)
        for agent, rank in peer.ranks.items():
            sources = [s for s in peer.sources if s.agent == agent]
            try:
                read.post(agent, self._descriptors(rank, sources, runs), notify if alone else b"")
            except TransferError:
                read.cancel()
                raise
        return read

    def _descriptors(self, rank: PeerKV, sources: list[Source], runs: list[Run]) -> Descriptors:
        """NIXL descriptor lists (ours, the rank's) and their bytes for `sources`' groups."""
        bb, ours = self.block_bytes, self.kv_cache.data_ptr()

        def at(base: int, blocks: int, group: int, block: int) -> int:
            return base + (group * blocks + block) * bb

        local, remote = [], []
        for s in sources:
            for r in runs:
                n = r.count * bb
                local.append((at(ours, self.num_blocks, s.local_group, r.local_start), n))
                remote.append(
                    (at(rank.base_addr, rank.num_blocks, s.remote_group, r.remote_start), n)
                )
        try:
            with self._lock:
                ours_d = self._agent.get_xfer_descs(
                    [(a, n, self.device_id) for a, n in local], self.mem_type
                )
                theirs_d = self._agent.get_xfer_descs(
                    [(a, n, rank.device_id) for a, n in remote], self.mem_type
                )
        except Exception as e:  # NIXL's own error types: the caller cancels parts posted
            raise TransferError(f"NIXL refused the descriptors for {rank.agent_name}: {e}") from e
        return Descriptors(ours_d, theirs_d, sum(n for _, n in local), len(local))

    def progress(self) -> None:
        """Progress the agent (answering peers' reads of our memory); any thread. The
        notifications it brings wait for `notifications()`."""
        with self._lock:
            for peer, messages in self._agent.get_new_notifs().items():
                self._pending.setdefault(peer, []).extend(messages)

    def notify(self, peer_name: str, message: bytes) -> None:
        """Send a note on its own (a tensor-parallel reader's, once all its ranks read)."""
        with self._lock:
            self._agent.send_notif(peer_name, message)

    def expect_readers(self, expected: bool) -> None:
        """Nothing to do in one process: `ReadProgress` progressing this agent is all."""

    def notifications(self) -> dict[str, list[bytes]]:
        """Messages peers attached to reads of our memory, by peer name."""
        self.progress()
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def close(self) -> None:
        for name in list(self._peers):
            self.remove_peer(name)
        with self._lock:
            self._agent.deregister_memory(self._registration)
