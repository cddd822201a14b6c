"""Our C++ paged prefill kernel (torch.ops.tandem.paged_prefill) against causal attention
computed in float64 from gathered K/V: chunks with and without a cached prefix, lengths
that are not multiples of its 16-query tiles or of a block, scattered blocks, rows of the
step that belong to no prefill (decode rows, left alone), built head sizes and a run-time
one, float32 and bfloat16."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.kernels import cpu

BLOCK, KV_HEADS, GROUP, LAYERS = 16, 3, 3, 2


@pytest.fixture(scope="module", autouse=True)
def kernels() -> Iterator[None]:
    if not cpu.vectorised():
        pytest.skip("paged_prefill is built only with AVX2 and FMA; this CPU or build lacks them")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _reference(q, cache, layer, table, start, query_len, context_len, scale):  # noqa: ANN001, ANN202
    """float64 causal attention of one sequence's query rows over its gathered context."""
    rows = cache[table, layer].double()  # [blocks, 2, bs, kvh, D]
    k = rows[:, 0].flatten(0, 1)[:context_len].repeat_interleave(GROUP, dim=1)  # [n, heads, D]
    v = rows[:, 1].flatten(0, 1)[:context_len].repeat_interleave(GROUP, dim=1)
    qs = q[start : start + query_len].double() * scale  # [len, heads, D]
    scores = torch.einsum("qhd,nhd->hqn", qs, k)
    first = context_len - query_len
    visible = torch.arange(context_len)[None, :] <= (first + torch.arange(query_len))[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqn,nhd->qhd", scores.softmax(-1), v)


# (query_len, context_len): a whole prompt; one of a block and a bit; a chunk over a cached
# prefix that ends mid-block; a short chunk after a long prefix
SEQS = [(37, 37), (17, 17), (40, 75), (3, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 80, 48])
def test_paged_prefill_matches_reference(dtype: torch.dtype, head_dim: int) -> None:
    g = torch.Generator().manual_seed(head_dim)
    max_blocks = max(-(-c // BLOCK) for _, c in SEQS)
    num_blocks = len(SEQS) * max_blocks + 2
    cache = torch.randn(num_blocks, LAYERS, 2, BLOCK, KV_HEADS, head_dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: len(SEQS) * max_blocks].view(len(SEQS), -1)
    # the step's rows: a decode row first, then each sequence's queries
    query_lens = torch.tensor([n for n, _ in SEQS])
    context_lens = torch.tensor([c for _, c in SEQS])
    starts = 1 + torch.cumsum(query_lens, 0) - query_lens
    rows = 1 + int(query_lens.sum())
    q = torch.randn(rows, KV_HEADS * GROUP, head_dim, generator=g).to(dtype)
    scale = head_dim**-0.5

    out = torch.ops.tandem.paged_prefill(
        q, cache, 1, tables, starts, query_lens, context_lens, scale
    )

    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for s, (n, c) in enumerate(SEQS):
        start = int(starts[s])
        want = _reference(q, cache, 1, tables[s], start, n, c, scale)
        torch.testing.assert_close(out[start : start + n].double(), want, atol=tol, rtol=tol)


def test_sequences_outside_q_or_their_block_table_are_refused() -> None:
    cache = torch.zeros(4, 1, 2, BLOCK, KV_HEADS, 16)
    q = torch.zeros(20, KV_HEADS * GROUP, 16)
    table = torch.tensor([[0, 1]])

    def call(start: int, query_len: int, context_len: int) -> None:
        torch.ops.tandem.paged_prefill(
            q,
            cache,
            0,
            table,
            torch.tensor([start]),
            torch.tensor([query_len]),
            torch.tensor([context_len]),
            1.0,
        )

    call(0, 20, 32)  # fits: 20 rows, a context of two blocks
    with pytest.raises(RuntimeError, match="not inside q"):
        call(5, 20, 32)
    with pytest.raises(RuntimeError, match="does not hold"):
        call(0, 20, 33)  # a third block the table does not have
    with pytest.raises(RuntimeError, match="does not hold"):
        call(0, 20, 10)  # fewer positions than queries


def test_a_head_size_not_a_multiple_of_16_is_refused() -> None:
    cache = torch.zeros(2, 1, 2, BLOCK, KV_HEADS, 24)
    q = torch.zeros(4, KV_HEADS * GROUP, 24)
    one = torch.tensor([4])
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.tandem.paged_prefill(q, cache, 0, torch.tensor([[0]]), one - 4, one, one, 1.0)
