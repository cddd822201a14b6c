"""Our C++ paged decode kernel against attention computed in float64 from gathered K/V:
its three ways of splitting work (with 2 threads: a batch of one split over its context
too, small batches per kv head, large ones per sequence), built head sizes and a run-time
one, partial blocks, padding rows and scattered blocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.kernels import cpu

BLOCK, KV_HEADS, GROUP, LAYERS = 16, 3, 3, 2


@pytest.fixture(scope="module", autouse=True)
def kernels() -> Iterator[None]:
    assert cpu.load(), "the C++ CPU kernels failed to build here"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the work splits below are chosen for 2 threads
    yield
    torch.set_num_threads(threads)


def _reference(q, cache, layer, tables, lens, scale):  # noqa: ANN001, ANN202
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        group = q.shape[1] // cache.shape[4]
        rows = cache[tables[b], layer].double()  # [blocks, 2, bs, kvh, D]
        k = rows[:, 0].flatten(0, 1)[:n].repeat_interleave(group, dim=1)  # [n, heads, D]
        v = rows[:, 1].flatten(0, 1)[:n].repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].double() * scale, k)
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 24])
@pytest.mark.parametrize("batch", [1, 2, 3, 9])
def test_paged_decode_matches_reference(dtype: torch.dtype, head_dim: int, batch: int) -> None:
    g = torch.Generator().manual_seed(batch * 100 + head_dim)
    max_blocks = 9  # a batch of one splits its context into runs of 2-3 blocks
    num_blocks = batch * max_blocks + 3
    cache = torch.randn(num_blocks, LAYERS, 2, BLOCK, KV_HEADS, head_dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: batch * max_blocks].view(batch, -1)
    lens = torch.randint(1, max_blocks * BLOCK + 1, (batch,), generator=g)
    lens[-1] = 0 if batch > 1 else lens[-1]  # a padding row of a captured batch size
    q = torch.randn(batch, KV_HEADS * GROUP, head_dim, generator=g).to(dtype)
    scale = head_dim**-0.5

    out = torch.ops.tandem.paged_decode(q, cache, 1, tables, lens, scale)

    want = _reference(q, cache, 1, tables, lens, scale)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)
    assert out.dtype == dtype


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4, 5, 8])
def test_paged_decode_takes_any_group_of_query_heads(head_dim: int, group: int) -> None:
    """The bfloat16 walk attends a kv head's query heads together, as many at once as
    their accumulators fit in registers (4 at head size 64, 2 at 128), the rest after:
    every group size gives each head its own attention."""
    g = torch.Generator().manual_seed(group * 1000 + head_dim)
    batch, max_blocks, kv_heads = 5, 4, 2
    num_blocks = batch * max_blocks
    cache = torch.randn(num_blocks, LAYERS, 2, BLOCK, kv_heads, head_dim, generator=g)
    cache = cache.to(torch.bfloat16)
    tables = torch.randperm(num_blocks, generator=g).view(batch, -1)
    lens = torch.randint(1, max_blocks * BLOCK + 1, (batch,), generator=g)
    q = torch.randn(batch, kv_heads * group, head_dim, generator=g).to(torch.bfloat16)
    scale = head_dim**-0.5

    out = torch.ops.tandem.paged_decode(q, cache, 0, tables, lens, scale)

    want = _reference(q, cache, 0, tables, lens, scale)
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(("block", "max_blocks"), [(16, 40), (48, 14), (512, 2)])
@pytest.mark.parametrize("batch", [1, 2, 9])
def test_paged_decode_over_long_contexts(block: int, max_blocks: int, batch: int) -> None:
    """The bfloat16 walk takes a context 256 tokens at a time (whole blocks, at least
    one), each chunk's softmax folded into the last's: contexts of several chunks, block
    sizes that do not divide 256 or exceed it, and scores spread wide enough that a later
    chunk raises the maximum."""
    g = torch.Generator().manual_seed(batch * 10 + block)
    num_blocks = batch * max_blocks + 1
    cache = torch.randn(num_blocks, LAYERS, 2, block, KV_HEADS, 64, generator=g)
    cache = cache.to(torch.bfloat16)
    tables = torch.randperm(num_blocks, generator=g)[: batch * max_blocks].view(batch, -1)
    lens = torch.randint(block * max_blocks // 2, block * max_blocks + 1, (batch,), generator=g)
    q = (3 * torch.randn(batch, KV_HEADS * GROUP, 64, generator=g)).to(torch.bfloat16)

    out = torch.ops.tandem.paged_decode(q, cache, 1, tables, lens, 0.125)

    want = _reference(q, cache, 1, tables, lens, 0.125)
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)
