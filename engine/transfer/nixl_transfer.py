"""KV-cache transfer over NIXL: one-sided READs of a peer's registered KV memory.

Each worker registers its whole KV cache once at start and publishes a `PeerKV` (agent
name, NIXL metadata, base address, block size in bytes). A reader loads a peer's metadata
when the peer joins (`add_peer`), and again when it restarts: a re-added name replaces the
old agent, so a restarted peer is never read through stale connection state.

The cache is block-major ([blocks, layers, 2, block, heads, dim]), so a block is one
contiguous region and a run of adjacent blocks one descriptor.

A READ of our memory completes only as our agent progresses (UCX answers the reader from
inside our calls), and so does its notification. Without NIXL's progress thread (which
spins a core) the owner progresses it by calling `notifications()` or `progress()`; a
worker whose engine thread is inside a long step does so from a thread of its own while
readers are expected (engine/transfer/progress.py). Every call into the agent holds one
lock, so the two threads never meet inside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from engine.transfer.base import PeerKV, ReadResult, TransferError, wait
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
        self._lock = threading.Lock()  # around every call into the agent
        self._pending: dict[str, list[bytes]] = {}  # notifications `progress()` took

    def describe(self) -> PeerKV:
        return PeerKV(
            agent_name=self.name,
            metadata=self._metadata(),
            base_addr=self.kv_cache.data_ptr(),
            block_bytes=self.block_bytes,
            num_blocks=self.kv_cache.shape[0],
            device_id=self.device_id,
        )

    def _metadata(self) -> bytes:
        with self._lock:
            metadata: bytes = self._agent.get_agent_metadata()
        return metadata

    # ---- peers ---------------------------------------------------------------------
    def add_peer(self, peer: PeerKV) -> None:
        """Load (or reload, after a restart) a peer's agent metadata."""
        peer.check_size(1)
        if peer.block_bytes != self.block_bytes:
            raise ValueError(
                f"peer {peer.agent_name} has {peer.block_bytes}-byte blocks, "
                f"we have {self.block_bytes}"
            )
        if peer.agent_name in self._peers:
            self.remove_peer(peer.agent_name)
        with self._lock:
            self._agent.add_remote_agent(peer.metadata)
            # Connect now, while the peer has just joined (and is idle): a first READ
            # would otherwise wait for its wire-up, which a busy peer answers late.
            self._agent.make_connection(peer.agent_name)
        self._peers[peer.agent_name] = peer

    def remove_peer(self, agent_name: str) -> None:
        if self._peers.pop(agent_name, None) is not None:
            with self._lock:
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
        """A read polled to its end (tests, benchmarks); workers poll from their loop."""
        return wait(self.start_read(peer_name, remote_blocks, local_blocks, notify), timeout_s)

    def start_read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        notify: bytes = b"",
    ) -> _NixlRead:
        """Post a READ of the peer's `remote_blocks` into our `local_blocks`, one
        descriptor per run of adjacent blocks. `notify` reaches the peer on completion."""
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
        try:  # NIXL raises its own errors (a peer gone: nixlRemoteDisconnectError)
            with self._lock:
                handle = self._agent.initialize_xfer(
                    "READ",
                    self._agent.get_xfer_descs(local, self.mem_type),
                    self._agent.get_xfer_descs(remote, self.mem_type),
                    peer_name,
                    notify,
                )
        except Exception as e:
            raise TransferError(f"NIXL read of {peer_name} not started: {e!r}") from e
        read = _NixlRead(self._agent, self._lock, handle, len(local_blocks) * bb, len(runs))
        try:
            with self._lock:
                read.state = self._agent.transfer(handle)
        except Exception as e:
            read.cancel()
            raise TransferError(f"NIXL read of {peer_name} failed: {e!r}") from e
        return read

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


class _NixlRead:
    """One posted READ; its handle is released once the read has ended or is cancelled."""

    def __init__(
        self, agent: Any, lock: threading.Lock, handle: Any, nbytes: int, descriptors: int
    ) -> None:
        self._agent, self._lock, self._handle = agent, lock, handle
        self._bytes, self._descriptors = nbytes, descriptors
        self._start = time.perf_counter()
        self.state = "PROC"

    def poll(self) -> ReadResult | None:
        if self.state == "PROC":
            try:
                with self._lock:
                    self.state = self._agent.check_xfer_state(self._handle)
            except Exception as e:  # as "ERR": the peer is gone, the read did not finish
                self.state = f"ERR ({e!r})"
            if self.state == "PROC":
                return None
        self.cancel()  # ended: this only frees the handle
        if self.state != "DONE":
            raise TransferError(f"NIXL read failed: state {self.state}")
        return ReadResult(self._bytes, self._descriptors, time.perf_counter() - self._start)

    def cancel(self) -> bool:
        try:  # NIXL aborts an active transfer, and raises when it cannot
            with self._lock:
                self._agent.release_xfer_handle(self._handle)
        except Exception:
            return False
        return True
