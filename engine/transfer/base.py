"""What the KV exchange needs from a transfer backend: one-sided reads of a peer's blocks,
and the notes readers leave when they are done.

    reader.read(peer, remote_blocks, local_blocks, notify=note)   blocks until copied
    peer.notifications() -> {reader name: [note, ...]}            polled by the peer

`nixl` (engine/transfer/nixl_transfer.py) moves bytes between processes and hosts;
`local` (engine/transfer/local.py) copies between caches in one process, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["KVTransfer", "PeerKV", "ReadResult", "TransferError"]


class TransferError(RuntimeError):
    """A read that failed or did not finish in time; its destination blocks are garbage."""


@dataclass(frozen=True, slots=True)
class PeerKV:
    """What a worker publishes so that peers can read its registered KV memory."""

    agent_name: str
    metadata: bytes
    base_addr: int
    block_bytes: int
    num_blocks: int
    device_id: int = 0


@dataclass(frozen=True, slots=True)
class ReadResult:
    bytes: int
    descriptors: int
    seconds: float


class KVTransfer(Protocol):
    @property
    def name(self) -> str:
        """This end's name: what a handle tells readers to read from."""
        ...

    def read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        timeout_s: float = 10.0,
        notify: bytes = b"",
    ) -> ReadResult:
        """Copy the peer's `remote_blocks` into our `local_blocks`; blocks until done, and
        then delivers `notify` to the peer. Raises TransferError (the local blocks are then
        garbage)."""
        ...

    def notifications(self) -> dict[str, list[bytes]]:
        """Notes readers attached to completed reads of our memory since the last call,
        by reader name."""
        ...
