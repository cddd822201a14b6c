"""What the KV exchange needs from a transfer backend: one-sided reads of a peer's blocks,
and the notes readers leave when they are done.

    pending = reader.start_read(peer, remote, local, notify=note)   returns at once
    pending.poll() -> None while in flight, then ReadResult         raises TransferError
    pending.cancel() -> False if the read may still write `local`
    reader.read(...)                                                start_read + wait
    peer.notifications() -> {reader name: [note, ...]}              polled by the peer

A read is started and polled, never waited for, on an engine thread: a slow or dead peer
must not stop the step that serves every other request.

`nixl` (engine/transfer/nixl_transfer.py) moves bytes between processes and hosts;
`local` (engine/transfer/local.py) copies between caches in one process, for tests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.transfer.heads import HeadSlice

__all__ = [
    "HeadSlice",
    "KVTransfer",
    "PeerKV",
    "PendingRead",
    "ReadResult",
    "TransferError",
    "wait",
]


class TransferError(RuntimeError):
    """A read that failed or did not finish in time; its destination blocks are garbage."""


@dataclass(frozen=True, slots=True)
class PeerKV:
    """What a worker publishes so that peers can read its registered KV memory."""

    agent_name: str
    metadata: bytes
    base_addr: int
    block_bytes: int  # one block of one head group (all layers)
    num_blocks: int
    heads: HeadSlice  # the KV heads this memory holds, and its head groups
    device_id: int = 0
    # A tensor-parallel worker's other ranks (1, 2, ...), each its own agent and memory
    # holding its KV heads (engine/parallel/kv.py).
    followers: tuple[PeerKV, ...] = ()

    def ranks(self) -> tuple[PeerKV, ...]:
        """Every rank's memory, rank 0 first."""
        return (self, *self.followers)


@dataclass(frozen=True, slots=True)
class ReadResult:
    bytes: int
    descriptors: int
    seconds: float


class PendingRead(Protocol):
    def poll(self) -> ReadResult | None:
        """None while the read is in flight; its result once done (the note is then on
        its way to the peer). Raises TransferError when it failed."""
        ...

    def cancel(self) -> bool:
        """Stop an unfinished read. False when it could not be stopped: it may still write
        the local blocks, which must stay out of use until poll() says it has ended."""
        ...


class KVTransfer(Protocol):
    @property
    def name(self) -> str:
        """This end's name: what a handle tells readers to read from."""
        ...

    def start_read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        notify: bytes = b"",
    ) -> PendingRead:
        """Start copying the peer's `remote_blocks` into our `local_blocks`; `notify` is
        delivered to the peer when the copy completes. Raises TransferError when the read
        cannot start (the local blocks are then untouched)."""
        ...

    def notifications(self) -> dict[str, list[bytes]]:
        """Notes readers attached to completed reads of our memory since the last call,
        by reader name."""
        ...


def wait(pending: PendingRead, timeout_s: float) -> ReadResult:
    """Poll a read to its end (for callers with nothing else to do: tests, benchmarks).
    Raises TransferError when it fails or is not done in `timeout_s`; a read that could
    not be cancelled then is polled to its end first, so the local blocks are left alone."""
    deadline = time.perf_counter() + timeout_s
    while (result := pending.poll()) is None:
        if time.perf_counter() > deadline:
            while not pending.cancel() and pending.poll() is None:
                pass
            raise TransferError(f"the read did not finish in {timeout_s:g} s")
    return result
