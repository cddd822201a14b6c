import pytest

from engine.transfer.runs import Run, coalesce


def test_adjacent_blocks_on_both_sides_form_one_run() -> None:
    assert coalesce([7, 8, 9, 2], [40, 41, 42, 12]) == [Run(7, 40, 3), Run(2, 12, 1)]


def test_a_gap_on_either_side_breaks_the_run() -> None:
    assert coalesce([1, 2], [5, 7]) == [Run(1, 5, 1), Run(2, 7, 1)]
    assert coalesce([1, 3], [5, 6]) == [Run(1, 5, 1), Run(3, 6, 1)]


def test_empty_and_mismatched() -> None:
    assert coalesce([], []) == []
    with pytest.raises(ValueError):
        coalesce([1], [])
