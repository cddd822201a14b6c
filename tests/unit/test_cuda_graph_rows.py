"""How a decode step is padded to a captured CUDA graph's size (engine/cuda_graph.py): host
arrays only, so checked here; the graphs themselves in tests/integration/test_cuda_graph.py."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cuda_graph import DecodeRows

BS = 4  # block size


def test_real_rows_write_their_slot_and_read_their_pages() -> None:
    # row 0: position 5 in blocks [7, 3, 9] (block 9 allocated ahead, not yet reached)
    # row 1: position 8, the first slot of its third block
    rows = DecodeRows.pad(2, [11, 12], [5, 8], [[7, 3, 9], [2, 4, 6]], BS)
    assert rows.ids.tolist() == [11, 12]
    assert rows.positions.tolist() == [5, 8]
    assert rows.src.tolist() == [0, 1]
    assert rows.blocks.tolist() == [3, 6] and rows.offsets.tolist() == [1, 0]
    assert rows.kv_indptr.tolist() == [0, 2, 5]
    assert rows.kv_indices.tolist() == [7, 3, 2, 4, 6]
    assert rows.last_page_len.tolist() == [2, 1]  # 6 tokens = 4 + 2; 9 tokens = 8 + 1
    assert rows.kv_indptr.dtype == rows.kv_indices.dtype == np.int32


def test_padding_rows_rewrite_row_0_and_read_one_of_its_pages() -> None:
    rows = DecodeRows.pad(4, [11, 12], [5, 8], [[7, 3], [2, 4, 6]], BS)
    assert rows.ids.tolist() == [11, 12, 11, 11]
    assert rows.positions.tolist() == [5, 8, 5, 5]
    assert rows.src.tolist() == [0, 1, 0, 0]  # row 0's k/v ...
    assert rows.blocks.tolist() == [3, 6, 3, 3]  # ... to row 0's slot: the same values again
    assert rows.offsets.tolist() == [1, 0, 1, 1]
    assert rows.kv_indptr.tolist() == [0, 2, 5, 6, 7]
    assert rows.kv_indices.tolist() == [7, 3, 2, 4, 6, 7, 7]
    assert rows.last_page_len.tolist() == [2, 1, 1, 1]


def test_capture_stands_in_at_block_0() -> None:
    rows = DecodeRows.pad(3, [], [], [], BS)
    assert rows.src.tolist() == [0, 0, 0]
    assert rows.blocks.tolist() == [0, 0, 0] and rows.offsets.tolist() == [0, 0, 0]
    assert rows.kv_indptr.tolist() == [0, 1, 2, 3] and rows.kv_indices.tolist() == [0, 0, 0]


def test_more_rows_than_the_graph_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        DecodeRows.pad(1, [1, 2], [0, 0], [[0], [1]], BS)
