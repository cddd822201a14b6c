"""KV-cache transfer over NIXL: one-sided READs of a peer's registered KV memory.

Each worker registers its whole KV cache once at start and publishes a `PeerKV` (agent
name, NIXL metadata, base address, block size in bytes). A reader loads a peer's metadata
when the peer joins (`add_peer`), and again when it restarts: a re-added name replaces the
old agent, so a restarted peer is never read through stale connection state.

The cache is block-major ([blocks, layers, 2, block, heads, dim]), so a block is one
contiguous region and a run of adjacent blocks one descriptor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from engine.transfer.base import PeerKV, ReadResult, TransferError
from engine.transfer.runs import coalesce

__all__ = ["NixlKVTransfer", "PeerKV", "ReadResult", "TransferError"]


class NixlKVTransfer:
    def __init__(self, name: str, kv_cache: torch.Tensor, progress_thread: bool = True) -> None:
        # A process whose memory is read must progress its agent to answer a reader's
        # connection set-up and to receive notifications: either NIXL's progress thread
        # (which spins without pause: a core per process) or regular notifications()
        # calls, which is what workers do from their engine loop.
        from nixl._api import nixl_agent, nixl_agent_config

        if not kv_cache.is_contiguous():
            raise ValueError("the KV cache must be one contiguous allocation")
        self.name = name
        self.kv_cache = kv_cache
        self.block_bytes = kv_cache[0].numel() * kv_cache.element_size()
        self.mem_type = "VRAM" if kv_cache.is_cuda else "DRAM"
        self.device_id = kv_cache.device.index or 0
        config = nixl_agent_config(enable_prog_thread=progress_thread, backends=["UCX"])
        self._agent: Any = nixl_agent(name, config)
        self._registration = self._agent.register_memory(kv_cache)
        self._peers: dict[str, PeerKV] = {}

    def describe(self) -> PeerKV:
        return PeerKV(
            agent_name=self.name,
            metadata=self._agent.get_agent_metadata(),
            base_addr=self.kv_cache.data_ptr(),
            block_bytes=self.block_bytes,
            num_blocks=self.kv_cache.shape[0],
            device_id=self.device_id,
        )

    # ---- peers ---------------------------------------------------------------------
    def add_peer(self, peer: PeerKV) -> None:
        """Load (or reload, after a restart) a peer's agent metadata."""
        if peer.block_bytes != self.block_bytes:
            raise ValueError(
                f"peer {peer.agent_name} has {peer.block_bytes}-byte blocks, "
                f"we have {self.block_bytes}"
            )
        if peer.agent_name in self._peers:
            self.remove_peer(peer.agent_name)
        self._agent.add_remote_agent(peer.metadata)
        # Connect now, while the peer has just joined (and is idle): a first READ would
        # otherwise wait for its wire-up, which a peer busy with a long step answers late.
        self._agent.make_connection(peer.agent_name)
        self._peers[peer.agent_name] = peer

    def remove_peer(self, agent_name: str) -> None:
        if self._peers.pop(agent_name, None) is not None:
            self._agent.remove_remote_agent(agent_name)

    # ---- reads ---------------------------------------------------------------------
    def read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        timeout_s: float = 10.0,
        notify: bytes = b"",
    ) -> ReadResult:
        """Copy the peer's `remote_blocks` into our `local_blocks`; blocks until done.
        `notify` is delivered to the peer when the read completes."""
        peer = self._peers.get(peer_name)
        if peer is None:
            raise TransferError(f"unknown peer {peer_name!r}: add_peer() it first")
        if any(not 0 <= b < peer.num_blocks for b in remote_blocks):
            raise TransferError(
                f"remote block id out of range for {peer_name} ({peer.num_blocks} blocks)"
            )
        if any(not 0 <= b < self.kv_cache.shape[0] for b in local_blocks):
            raise TransferError(f"local block id out of range ({self.kv_cache.shape[0]} blocks)")
        bb = self.block_bytes
        runs = coalesce(local_blocks, remote_blocks)
        local = [
            (self.kv_cache.data_ptr() + r.local_start * bb, r.count * bb, self.device_id)
            for r in runs
        ]
        remote = [
            (peer.base_addr + r.remote_start * bb, r.count * bb, peer.device_id) for r in runs
        ]
        start = time.perf_counter()
        handle = self._agent.initialize_xfer(
            "READ",
            self._agent.get_xfer_descs(local, self.mem_type),
            self._agent.get_xfer_descs(remote, self.mem_type),
            peer_name,
            notify,
        )
        try:
            self._wait(handle, self._agent.transfer(handle), start + timeout_s)
        finally:
            self._agent.release_xfer_handle(handle)
        return ReadResult(len(local_blocks) * bb, len(runs), time.perf_counter() - start)

    def _wait(self, handle: Any, state: str, deadline: float) -> None:
        while state == "PROC":
            if time.perf_counter() > deadline:
                raise TransferError("NIXL read timed out")
            state = self._agent.check_xfer_state(handle)
        if state != "DONE":
            raise TransferError(f"NIXL read failed: state {state}")

    def notifications(self) -> dict[str, list[bytes]]:
        """Messages peers attached to reads of our memory, by peer name."""
        return dict(self._agent.get_new_notifs())

    def close(self) -> None:
        for name in list(self._peers):
            self.remove_peer(name)
        self._agent.deregister_memory(self._registration)
