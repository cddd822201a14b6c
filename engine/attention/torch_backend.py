"""Paged attention in torch: the reference backend, on CPU and CUDA.

Decoding sequences (one query each) are batched into one call: on CPU (float32 or bfloat16)
our C++ kernel reads K/V in place from the paged cache (engine/kernels/csrc); elsewhere
one SDPA call over their gathered, padded block tables. Sequences with several queries (prefill
chunks) likewise: on a CPU with AVX2, one call of our kernel for all of them, reading their
context (cached prefix included) in place; elsewhere one SDPA call each, using the fresh k/v
directly when nothing precedes them and a gather of the cached blocks when something does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend, BatchLayout, SeqSlice


@dataclass(slots=True)
class _Prefill:
    start: int
    end: int
    context_len: int
    block_table: torch.Tensor  # [blocks covering context_len]
    mask: torch.Tensor | None  # [query_len, context_len] bool; None = plain causal


@dataclass(slots=True)
class _Meta:
    write_blocks: torch.Tensor  # [N] block id of each new token's slot
    write_offsets: torch.Tensor  # [N] offset inside that block
    write_slots: torch.Tensor  # [N] block * block_size + offset (the C++ kernel's form)
    decode_rows: torch.Tensor | None  # [Bd] rows of single-query sequences; None if none
    all_decode: bool
    block_tables: torch.Tensor | None  # [Bd, max_blocks], padded with block 0
    decode_lens: torch.Tensor | None  # [Bd] context length of each decoding sequence
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, max_blocks * block_size] True = attend
    prefills: list[_Prefill]
    native_prefill: _NativePrefill | None  # the prefills' metadata for our kernel


@dataclass(slots=True)
class _NativePrefill:
    block_tables: torch.Tensor  # [S, max_blocks], padded with block 0
    starts: torch.Tensor  # [S] first row of each sequence's queries
    query_lens: torch.Tensor  # [S]
    context_lens: torch.Tensor  # [S]


class TorchAttention(AttentionBackend):
    name = "torch"

    def __init__(
        self, kv_cache: torch.Tensor, block_size: int, num_heads: int, scale: float
    ) -> None:
        super().__init__(kv_cache, block_size, num_heads, scale)
        self._native = False  # torch.ops.tandem.* (engine/kernels/csrc) are loaded
        self._native_prefill = False  # and paged_prefill, which needs AVX2 and D % 16 == 0
        if kv_cache.device.type == "cpu" and kv_cache.dtype in (torch.float32, torch.bfloat16):
            from engine.kernels import cpu

            self._native = cpu.load()
            self._native_prefill = cpu.vectorised() and kv_cache.shape[-1] % 16 == 0

    def prepare(self, layout: BatchLayout) -> None:
        dev, bs = self.kv_cache.device, self.block_size
        blocks, offsets = self.slots(layout, bs)
        decode_rows: list[int] = []
        decode_tables: list[tuple[int, ...]] = []
        decode_lens: list[int] = []
        prefill_seqs: list[SeqSlice] = []
        for s in layout.seqs:
            if s.query_len == 1:
                decode_rows.append(s.query_start)
                decode_tables.append(_context_blocks(s, bs))
                decode_lens.append(s.context_len)
            else:
                prefill_seqs.append(s)
        native = self._native_prefill and bool(prefill_seqs)
        self._meta = _Meta(
            write_blocks=torch.tensor(blocks, dtype=torch.long, device=dev),
            write_offsets=torch.tensor(offsets, dtype=torch.long, device=dev),
            write_slots=torch.tensor(
                [b * bs + o for b, o in zip(blocks, offsets, strict=True)], device=dev
            ),
            decode_rows=torch.tensor(decode_rows, dtype=torch.long, device=dev)
            if decode_rows
            else None,
            all_decode=len(decode_rows) == layout.num_tokens,
            block_tables=_pad_tables(decode_tables, dev) if decode_rows else None,
            decode_lens=torch.tensor(decode_lens, dtype=torch.long, device=dev)
            if decode_rows
            else None,
            # the padding mask serves the SDPA path only; the C++ kernel reads the lengths
            decode_mask=_length_mask(decode_lens, decode_tables, bs, dev)
            if decode_rows and not self._native
            else None,
            prefills=[] if native else [_sdpa_prefill(s, bs, dev) for s in prefill_seqs],
            native_prefill=_native_prefill(prefill_seqs, bs, dev) if native else None,
        )

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        m = self._meta
        if self._native:
            torch.ops.tandem.write_kv(self.kv_cache, layer, k, v, m.write_slots)
        else:
            self.write_kv(layer, k, v, m.write_blocks, m.write_offsets)
        if m.native_prefill is not None:  # the prefill rows, in place from the cache
            n = m.native_prefill
            out = torch.ops.tandem.paged_prefill(
                q,
                self.kv_cache,
                layer,
                n.block_tables,
                n.starts,
                n.query_lens,
                n.context_lens,
                self.scale,
            )
        else:
            out = q if m.all_decode else torch.empty_like(q)
            for p in m.prefills:
                out[p.start : p.end] = self._prefill(p, q, k, v, layer)
        if m.decode_rows is not None:
            out = self._decode(layer, q, out)
        return out

    def _layer_cache(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The SDPA paths' views of one layer's K and V: [num_blocks, block_size, kv_heads, D]
        each (the C++ kernels take the whole cache and the layer; no view is made for them,
        ~2 us each a layer)."""
        return self.kv_cache[:, layer, 0], self.kv_cache[:, layer, 1]

    def _decode(
        self,
        layer: int,
        q: torch.Tensor,
        out: torch.Tensor,
    ) -> torch.Tensor:
        m = self._meta
        assert m.decode_rows is not None and m.block_tables is not None
        qd = q if m.all_decode else q[m.decode_rows]
        if self._native:  # reads K/V in place: no gather copy
            o = torch.ops.tandem.paged_decode(
                qd, self.kv_cache, layer, m.block_tables, m.decode_lens, self.scale
            )
        else:
            k_cache, v_cache = self._layer_cache(layer)
            # gather: [Bd * max_blocks, bs, kvH, D] -> [Bd, kvH, max_blocks * bs, D]
            # (index_select copies whole blocks; advanced indexing is ~20x slower on this view)
            shape = (qd.shape[0], -1, *k_cache.shape[2:])
            flat = m.block_tables.flatten()
            keys = k_cache.index_select(0, flat).view(shape).transpose(1, 2)
            values = v_cache.index_select(0, flat).view(shape).transpose(1, 2)
            o = F.scaled_dot_product_attention(
                qd.unsqueeze(2),
                keys,
                values,
                attn_mask=m.decode_mask,
                scale=self.scale,
                enable_gqa=True,
            ).squeeze(2)
        if m.all_decode:
            return o
        out[m.decode_rows] = o
        return out

    def _prefill(
        self,
        p: _Prefill,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
    ) -> torch.Tensor:
        if p.mask is None:  # nothing earlier in the cache: attend to this chunk's own k/v
            keys, values = k[p.start : p.end], v[p.start : p.end]
        else:
            k_cache, v_cache = self._layer_cache(layer)
            keys = k_cache.index_select(0, p.block_table).flatten(0, 1)[: p.context_len]
            values = v_cache.index_select(0, p.block_table).flatten(0, 1)[: p.context_len]
        o = F.scaled_dot_product_attention(
            q[p.start : p.end].transpose(0, 1).unsqueeze(0),
            keys.transpose(0, 1).unsqueeze(0),
            values.transpose(0, 1).unsqueeze(0),
            attn_mask=p.mask,
            is_causal=p.mask is None,
            scale=self.scale,
            enable_gqa=True,
        )
        return o[0].transpose(0, 1)


def _context_blocks(s: SeqSlice, bs: int) -> tuple[int, ...]:
    """The blocks that hold s's context (its block table may reach further)."""
    return s.block_ids[: -(-s.context_len // bs)]


def _sdpa_prefill(s: SeqSlice, bs: int, dev: torch.device) -> _Prefill:
    first = s.context_len - s.query_len
    mask = None
    if first > 0:  # query i sees context positions <= first + i
        q_pos = torch.arange(first, s.context_len, device=dev)[:, None]
        mask = torch.arange(s.context_len, device=dev)[None, :] <= q_pos
    table = torch.tensor(_context_blocks(s, bs), dtype=torch.long, device=dev)
    return _Prefill(s.query_start, s.query_start + s.query_len, s.context_len, table, mask)


def _native_prefill(seqs: list[SeqSlice], bs: int, dev: torch.device) -> _NativePrefill:
    return _NativePrefill(
        block_tables=_pad_tables([_context_blocks(s, bs) for s in seqs], dev),
        starts=torch.tensor([s.query_start for s in seqs], dtype=torch.long, device=dev),
        query_lens=torch.tensor([s.query_len for s in seqs], dtype=torch.long, device=dev),
        context_lens=torch.tensor([s.context_len for s in seqs], dtype=torch.long, device=dev),
    )


def _pad_tables(tables: list[tuple[int, ...]], dev: torch.device) -> torch.Tensor:
    width = max(len(t) for t in tables)
    return torch.tensor(
        [list(t) + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=dev
    )


def _length_mask(
    lens: list[int], tables: list[tuple[int, ...]], bs: int, dev: torch.device
) -> torch.Tensor:
    width = max(len(t) for t in tables) * bs
    positions = torch.arange(width, device=dev)[None, :]
    return (positions < torch.tensor(lens, device=dev)[:, None])[:, None, None, :]
