"""Where a reader rank reads each of its KV head groups from (engine/transfer/heads.py),
between workers that shard 4 KV heads over 1, 2 or 4 ranks."""

from __future__ import annotations

import pytest

from engine.transfer.heads import HeadSlice, Source, plan_sources


def _ranks(size: int, groups: int = 1, heads: int = 4) -> list[tuple[str, HeadSlice]]:
    n = heads // size
    return [(f"p{r}", HeadSlice(r * n, n, groups)) for r in range(size)]


def test_the_same_size_reads_rank_by_rank() -> None:
    peer = _ranks(2)
    assert plan_sources(HeadSlice(2, 2), peer) == [Source("p1", 0, 0)]


def test_a_rank_in_groups_reads_a_group_from_each_rank_of_a_larger_peer() -> None:
    # one rank holding all 4 heads in 4 groups, from a peer of 4 ranks of a head each
    assert plan_sources(HeadSlice(0, 4, 4), _ranks(4)) == [
        Source("p0", 0, 0),
        Source("p1", 0, 1),
        Source("p2", 0, 2),
        Source("p3", 0, 3),
    ]
    # rank 1 of 2 (heads 2-3, in 2 groups) from 4 ranks: the peer's ranks 2 and 3
    assert plan_sources(HeadSlice(2, 2, 2), _ranks(4)) == [Source("p2", 0, 0), Source("p3", 0, 1)]


def test_ranks_of_a_larger_reader_each_read_their_group_of_a_smaller_peer() -> None:
    peer = _ranks(1, groups=4)  # one rank, its 4 heads in 4 groups
    got = [plan_sources(h, peer) for _, h in _ranks(4)]
    assert got == [[Source("p0", g, 0)] for g in range(4)]
    # 2 ranks in 2 groups of a head, from 2 ranks of 2 heads each in 2 groups
    assert plan_sources(HeadSlice(2, 2, 2), _ranks(2, groups=2)) == [
        Source("p1", 0, 0),
        Source("p1", 1, 1),
    ]


def test_groups_that_do_not_line_up_are_refused_saying_what_to_set() -> None:
    with pytest.raises(ValueError, match="groups of 2 a rank and this worker in groups of 4"):
        plan_sources(HeadSlice(0, 4), _ranks(2))  # one rank, no head groups
    with pytest.raises(ValueError, match="--kv-head-groups"):
        plan_sources(HeadSlice(0, 1), _ranks(1))  # a rank reading half a peer's group
    with pytest.raises(ValueError, match="no rank of the peer holds KV head 4"):
        plan_sources(HeadSlice(4, 4), _ranks(2))  # another model's heads


def test_a_head_slice_must_split_into_its_groups() -> None:
    with pytest.raises(ValueError, match="3 KV heads cannot be laid out in 2 head groups"):
        HeadSlice(0, 3, 2)
