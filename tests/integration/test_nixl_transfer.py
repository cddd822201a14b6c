"""Real NIXL (UCX) reads between two processes on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.transfer.nixl_transfer import NixlKVTransfer, TransferError
from engine.transfer.peer_process import KVPeerProcess

SHAPE = (16, 2, 2, 4, 2, 8)  # [blocks, layers, 2, block, kv_heads, dim]: 2 KiB blocks


def spawn_peer(name: str, generation: int) -> KVPeerProcess:
    return KVPeerProcess(name, SHAPE, generation)


@pytest.fixture
def reader() -> Iterator[NixlKVTransfer]:
    t = NixlKVTransfer("reader", torch.zeros(SHAPE), progress_thread=False)
    yield t
    t.close()


def test_read_moves_exactly_the_requested_blocks(reader: NixlKVTransfer) -> None:
    peer = spawn_peer("peer-a", generation=1)
    reader.add_peer(peer.kv)
    result = reader.read(
        "peer-a", remote_blocks=[3, 4, 5, 9], local_blocks=[0, 1, 2, 7], notify=b"lease-1"
    )
    notes = peer.finish()
    block_bytes = reader.kv_cache[0].numel() * 4
    assert (result.bytes, result.descriptors) == (4 * block_bytes, 2)
    for local, remote in zip([0, 1, 2, 7], [3, 4, 5, 9], strict=True):
        assert torch.all(reader.kv_cache[local] == 1000 + remote)
    untouched = [b for b in range(SHAPE[0]) if b not in (0, 1, 2, 7)]
    assert torch.all(reader.kv_cache[untouched] == 0)
    assert notes == [b"lease-1"]


def test_restarted_peer_is_read_through_fresh_metadata(reader: NixlKVTransfer) -> None:
    first = spawn_peer("peer-b", generation=1)
    reader.add_peer(first.kv)
    reader.read("peer-b", [2], [0])
    first.finish()
    second = spawn_peer("peer-b", generation=2)  # same name, new process, new memory
    reader.add_peer(second.kv)
    reader.read("peer-b", [2], [0])
    second.finish()
    assert torch.all(reader.kv_cache[0] == 2002)


def test_unknown_peer_and_bad_block_ids(reader: NixlKVTransfer) -> None:
    with pytest.raises(TransferError, match="unknown peer"):
        reader.read("nobody", [0], [0])
    peer = spawn_peer("peer-c", generation=1)
    reader.add_peer(peer.kv)
    with pytest.raises(TransferError, match="out of range"):
        reader.read("peer-c", [SHAPE[0]], [0])
    peer.finish()


def test_a_peer_that_died_is_a_transfer_error(reader: NixlKVTransfer) -> None:
    """NIXL's own exceptions (nixlRemoteDisconnectError) never escape: a worker's engine
    loop recomputes on a TransferError, and anything else would kill it."""
    peer = spawn_peer("peer-d", generation=1)
    reader.add_peer(peer.kv)
    reader.read("peer-d", [1], [1])
    peer.kill()
    for _ in range(3):  # the first may still be posted; the disconnect shows after
        with pytest.raises(TransferError):
            reader.read("peer-d", [2], [2], timeout_s=5)
