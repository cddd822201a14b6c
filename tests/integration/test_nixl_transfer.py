"""Real NIXL (UCX) reads between two processes on this machine."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from engine.transfer.nixl_transfer import NixlKVTransfer, TransferError
from engine.transfer.peer_process import KVPeerProcess
from engine.transfer.progress import ReadProgress

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


def test_a_peer_inside_a_long_step_answers_reads_from_its_progress_thread(
    reader: NixlKVTransfer,
) -> None:
    """A read of a peer whose engine thread polls its agent only between 2 s steps ends
    well inside the step: its ReadProgress thread progresses the agent (UCX answers the
    reader from inside the owner's calls). Before it, a prefill worker's reads waited
    for the end of its step: up to a whole prompt's prefill."""
    peer = KVPeerProcess("peer-e", SHAPE, generation=1, step_s=2.0)
    reader.add_peer(peer.kv)
    started = time.monotonic()
    result = reader.read("peer-e", [5, 6], [0, 1], timeout_s=10.0, notify=b"lease-e")
    took = time.monotonic() - started
    notes = peer.finish()
    assert took < 1.0, took
    assert result.bytes == 2 * reader.block_bytes
    assert torch.all(reader.kv_cache[0] == 1005) and torch.all(reader.kv_cache[1] == 1006)
    assert notes == [b"lease-e"]  # notifications taken by the thread reach the owner


def test_read_progress_polls_only_while_readers_are_expected(reader: NixlKVTransfer) -> None:
    """Idle workers are many on a host of mock workers: the thread sleeps until woken."""
    expected = [False]
    progress = ReadProgress(reader, lambda: expected[0], every_s=0.001)
    try:
        progress.wake()
        time.sleep(0.1)
        assert progress.rounds == 0  # woken, but nobody is expected
        expected[0] = True
        progress.wake()
        time.sleep(0.2)
        assert progress.rounds >= 20  # every ~1 ms
        expected[0] = False
        time.sleep(0.05)
        rounds = progress.rounds
        time.sleep(0.2)
        assert progress.rounds == rounds  # asleep again
    finally:
        progress.stop()
