"""Splitting chunk gaps into per-token latencies (pure: the token counter is a function)."""

import pytest

from loadtest.itl import chunk_token_counts, largest_remainder, settle, token_itls
from loadtest.records import RequestOutput


def words(text: str) -> int:
    return len(text.split())


def test_one_token_per_chunk_is_exact() -> None:
    assert chunk_token_counts(["a", "b", "c"], 3, words) == [1, 1, 1]
    assert token_itls([0.05, 0.07, 0.10], [1, 1, 1]) == pytest.approx([0.02, 0.03])


def test_a_chunk_with_two_tokens_gives_two_gaps_of_half() -> None:
    counts = chunk_token_counts([" a", " b c", " d"], 4, words)
    assert counts == [1, 2, 1]
    assert token_itls([0.05, 0.09, 0.11], counts) == pytest.approx([0.02, 0.02, 0.02])


def test_tokens_that_came_with_the_first_share_the_first_gap() -> None:
    counts = chunk_token_counts([" a b", " c", " d"], 4, words)
    assert counts == [2, 1, 1]
    itls = token_itls([0.05, 0.09, 0.11], counts)
    assert itls == pytest.approx([0.02, 0.02, 0.02])  # N - 1 entries
    assert sum(itls) == pytest.approx(0.11 - 0.05)


def test_surplus_the_tokenizer_cannot_place_is_spread_evenly() -> None:
    # The server says 6 tokens in 3 chunks, the text looks like one token each.
    counts = chunk_token_counts(["x", "y", "z"], 6, words)
    assert counts == [2, 2, 2]
    assert sum(chunk_token_counts(["x", "y", "z"], 7, words)) == 7


def test_fewer_tokens_than_chunks_counts_one_per_chunk() -> None:
    assert chunk_token_counts(["a", "b", "c"], 2, words) == [1, 1, 1]


def test_largest_remainder_adds_up() -> None:
    assert largest_remainder(5, [1, 1, 1]) == [2, 2, 1]
    assert largest_remainder(10, [3, 0, 1]) == [8, 0, 2]
    assert sum(largest_remainder(7, [5, 3, 2, 9])) == 7


def test_settle_uses_the_usage_count_else_counts_itself() -> None:
    out = RequestOutput("w", chunk_times=[0.05, 0.07], chunk_texts=[" a", " b c"])
    out.usage_output_tokens = 3
    settle(out, words)
    assert (out.output_len, out.chunk_tokens) == (3, [1, 2])
    assert out.itls == pytest.approx([0.01, 0.01])

    no_usage = RequestOutput("w", chunk_times=[0.05, 0.07], chunk_texts=[" a", " b c"])
    settle(no_usage, words)
    assert no_usage.output_len == 3
