"""Rank 0's side of a tensor-parallel worker's KV reads (engine/parallel/kv.py), with the
test in its follower's place at the other end of the pipe: rank 0 reads its heads from the
peer's rank 0 over NIXL (a real peer process), asks its follower to read its own from the
peer, and tells the peer it is done (the note that ends the peer's lease) only once every
rank's read has ended well. A read some rank did not finish sends no note."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
import torch

from engine.parallel.group import TPGroup
from engine.parallel.kv import TPKVTransfer
from engine.parallel.kv_messages import (
    AddPeer,
    AgentReady,
    Cancel,
    PeerAdded,
    Read,
    ReadEnded,
    RemovePeer,
    StartAgent,
)
from engine.transfer.base import PeerKV, PendingRead, ReadResult, TransferError
from engine.transfer.heads import HeadSlice
from engine.transfer.nixl_transfer import NixlKVTransfer
from engine.transfer.peer_process import KVPeerProcess

SHAPE = (8, 2, 16)  # blocks, then one block's values
FOLLOWER_RESULT = ReadResult(bytes=128, descriptors=1, seconds=0.001)


@pytest.fixture
def peer() -> Iterator[KVPeerProcess]:
    peer = KVPeerProcess("tp-peer", SHAPE)
    yield peer
    peer.kill()


@pytest.fixture
def rank0() -> Iterator[tuple[TPKVTransfer, Connection]]:
    """Rank 0's transfer, and the follower's end of its pipe (answered by the test)."""
    ours, follower = mp.Pipe()
    # two ranks of one KV head each (SHAPE's blocks stand for one head's)
    own = NixlKVTransfer("tp-reader", torch.zeros(SHAPE), False, heads=HeadSlice(0, 1))
    rank1 = dataclasses.replace(own.describe(), agent_name="tp-reader-rank1", heads=HeadSlice(1, 1))
    follower.send(AgentReady(rank1))
    transfer = TPKVTransfer(own, TPGroup(0, 2, None, [ours], threading.Event()))
    assert follower.recv() == StartAgent("tp-reader-rank1")
    assert [r.agent_name for r in transfer.describe().followers] == ["tp-reader-rank1"]
    yield transfer, follower
    transfer.close()


def _poll_until_ended(pending: PendingRead, timeout_s: float = 10.0) -> ReadResult:
    deadline = time.monotonic() + timeout_s
    while (result := pending.poll()) is None:
        assert time.monotonic() < deadline, "the read did not end"
        time.sleep(0.001)
    return result


def _two_ranks(peer: KVPeerProcess) -> PeerKV:
    """The peer process as rank 0 of a worker of two ranks, a KV head each."""
    rank1 = dataclasses.replace(peer.kv, agent_name="tp-peer-rank1", heads=HeadSlice(1, 1))
    return dataclasses.replace(peer.kv, heads=HeadSlice(0, 1), followers=(rank1,))


def test_the_note_goes_once_every_rank_has_read(
    peer: KVPeerProcess, rank0: tuple[TPKVTransfer, Connection]
) -> None:
    transfer, follower = rank0
    follower.send(PeerAdded(""))  # the follower's answer, ahead of the ask
    transfer.add_peer(_two_ranks(peer))
    assert follower.recv() == AddPeer(_two_ranks(peer))  # each rank plans its own reads

    # read A: rank 0's own read ends, the follower's does not; it is cancelled
    unfinished = transfer.start_read("tp-peer", [1, 2], [3, 4], notify=b"A")
    assert follower.recv() == Read(0, "tp-peer", [1, 2], [3, 4])
    time.sleep(0.2)  # ample for rank 0's own read of two small blocks
    assert unfinished.poll() is None  # the follower has not answered
    assert not unfinished.cancel()  # the follower may still write: not yet
    assert follower.recv() == Cancel(0)
    follower.send(ReadEnded(0, None, "cancelled"))
    with pytest.raises(TransferError, match="cancelled"):
        _poll_until_ended(unfinished)

    # read B: both ranks read; the note follows, once
    read = transfer.start_read("tp-peer", [5], [6], notify=b"B")
    assert follower.recv() == Read(1, "tp-peer", [5], [6])
    follower.send(ReadEnded(1, FOLLOWER_RESULT))
    result = _poll_until_ended(read)
    block_bytes = peer.kv.block_bytes
    assert (result.bytes, result.descriptors) == (block_bytes + FOLLOWER_RESULT.bytes, 2)
    assert torch.equal(transfer.own.kv_cache[6], torch.full(SHAPE[1:], 1005.0))  # peer's 5
    assert peer.finish() == [b"B"]


def test_a_peer_whose_head_groups_are_not_ours_or_that_a_follower_cannot_load_is_refused(
    peer: KVPeerProcess, rank0: tuple[TPKVTransfer, Connection]
) -> None:
    transfer, follower = rank0
    # one rank holding both heads in one group: a rank of ours would read half a group
    whole = dataclasses.replace(peer.kv, heads=HeadSlice(0, 2))
    with pytest.raises(ValueError, match="groups of 2 a rank and this worker in groups of 1"):
        transfer.add_peer(whole)
    follower.send(PeerAdded("rank of tp-peer: unreachable"))
    with pytest.raises(ValueError, match="unreachable"):
        transfer.add_peer(_two_ranks(peer))
    assert follower.recv() == AddPeer(_two_ranks(peer))
    assert follower.recv() == RemovePeer("tp-peer")  # unloaded on every rank
    with pytest.raises(TransferError, match="unknown peer"):  # nothing half-loaded
        transfer.start_read("tp-peer", [1], [1])
