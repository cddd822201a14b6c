"""Real NIXL reads between workers that shard the KV heads over different numbers of
ranks (engine/transfer/heads.py): the side with fewer ranks holds its cache in head
groups, and each group is read from, or into, the one rank that holds the same heads:
one descriptor per run of adjacent blocks and group, exactly the head slices needed, and
the reader's note to the peer's rank 0 only once every part has ended."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from engine.transfer.base import PeerKV
from engine.transfer.heads import HeadSlice
from engine.transfer.nixl_transfer import NixlKVTransfer, TransferError
from engine.transfer.peer_process import KVPeerProcess

GROUP = (8, 2, 2, 4, 1, 8)  # one head group's cache: [blocks, layers, 2, block, 1 head, dim]
GROUP_BLOCK_BYTES = 2 * 2 * 4 * 1 * 8 * 4


@pytest.fixture
def peers() -> Iterator[list[KVPeerProcess]]:
    started: list[KVPeerProcess] = []
    yield started
    for peer in started:
        peer.kill()


def test_one_rank_in_two_groups_reads_each_from_the_rank_that_holds_it(
    peers: list[KVPeerProcess],
) -> None:
    # the peer: two ranks, a head each (rank 0 generation 1, rank 1 generation 2)
    peers += [
        KVPeerProcess("hg-rank0", GROUP, 1, heads=HeadSlice(0, 1)),
        KVPeerProcess("hg-rank1", GROUP, 2, heads=HeadSlice(1, 1)),
    ]
    two_ranks = dataclasses.replace(peers[0].kv, followers=(peers[1].kv,))
    reader = NixlKVTransfer("hg-reader", torch.zeros(2, *GROUP), False, HeadSlice(0, 2, 2))
    try:
        reader.add_peer(two_ranks)
        result = reader.read("hg-rank0", [3, 4, 6], [0, 1, 5], notify=b"lease")
        # two runs of blocks, each read once a group: exactly both heads of 3 blocks
        assert (result.bytes, result.descriptors) == (2 * 3 * GROUP_BLOCK_BYTES, 4)
        for local, remote in zip([0, 1, 5], [3, 4, 6], strict=True):
            assert torch.all(reader.kv_cache[0, local] == 1000 + remote)  # head 0: rank 0
            assert torch.all(reader.kv_cache[1, local] == 2000 + remote)  # head 1: rank 1
        untouched = [b for b in range(GROUP[0]) if b not in (0, 1, 5)]
        assert torch.all(reader.kv_cache[:, untouched] == 0)
        # the note went to rank 0, once, after both parts
        assert peers[0].finish() == [b"lease"] and peers[1].finish() == []
    finally:
        reader.close()


def test_a_read_whose_part_from_one_rank_fails_fails_whole_and_sends_no_note(
    peers: list[KVPeerProcess],
) -> None:
    peers += [
        KVPeerProcess("hg-alive", GROUP, 1, heads=HeadSlice(0, 1)),
        KVPeerProcess("hg-dies", GROUP, 2, heads=HeadSlice(1, 1)),
    ]
    two_ranks = dataclasses.replace(peers[0].kv, followers=(peers[1].kv,))
    reader = NixlKVTransfer("hg-reader2", torch.zeros(2, *GROUP), False, HeadSlice(0, 2, 2))
    try:
        reader.add_peer(two_ranks)
        peers[1].kill()  # rank 1 dies (kill -9) before the read
        with pytest.raises(TransferError):
            reader.read("hg-alive", [1, 2], [1, 2], timeout_s=30, notify=b"lease")
        # rank 0's lease is not ended by a read that did not get every head
        assert peers[0].finish() == []
    finally:
        reader.close()


def test_two_ranks_each_read_their_group_of_a_one_rank_peer(
    peers: list[KVPeerProcess],
) -> None:
    peers.append(KVPeerProcess("hg-whole", GROUP, 1, heads=HeadSlice(0, 2, 2)))
    ranks = [
        NixlKVTransfer(f"hg-rank{r}-reader", torch.zeros(GROUP), False, HeadSlice(r, 1))
        for r in range(2)
    ]
    try:
        for rank in ranks:
            rank.add_peer(peers[0].kv)
        results = [rank.read("hg-whole", [2, 3], [6, 7]) for rank in ranks]
        # each rank read its own head's group: half the blocks' bytes each, one run
        assert [(r.bytes, r.descriptors) for r in results] == [(2 * GROUP_BLOCK_BYTES, 1)] * 2
        for g, rank in enumerate(ranks):
            for local, remote in ((6, 2), (7, 3)):
                assert torch.all(rank.kv_cache[local] == 1000 + 100 * g + remote)
    finally:
        for rank in ranks:
            rank.close()


def test_groups_that_do_not_line_up_are_refused_saying_what_to_set(
    peers: list[KVPeerProcess],
) -> None:
    peers += [
        KVPeerProcess("hg-half0", GROUP, 1, heads=HeadSlice(0, 1)),
        KVPeerProcess("hg-half1", GROUP, 1, heads=HeadSlice(1, 1)),
    ]
    two_ranks: PeerKV = dataclasses.replace(peers[0].kv, followers=(peers[1].kv,))
    # both heads in one group: each block holds both heads side by side, so no run of
    # either rank's blocks lands in one piece
    shape = (*GROUP[:4], 2, GROUP[5])
    reader = NixlKVTransfer("hg-one-group", torch.zeros(shape), False, HeadSlice(0, 2))
    try:
        with pytest.raises(ValueError, match="--kv-head-groups"):
            reader.add_peer(two_ranks)
    finally:
        reader.close()
