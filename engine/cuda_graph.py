"""The decode step on CUDA: one CUDA graph per captured batch size, replayed each step
(vLLM's way), so a step costs one launch instead of ~20 kernel launches a layer.

A graph reads its inputs from static buffers, which each step fills before the replay;
flashinfer's decode wrapper in its CUDA-graph mode keeps the page table in buffers of its
own, planned (host-side) before the replay. A batch is padded to the next captured size.
Padding rows must not change the cache, yet a captured scatter writes every row, so each
padding row writes row 0's K/V again, to row 0's slot (the same values twice: no race),
and attends to one page of row 0's (read only):

    rows:    [ real 0 .. real B-1 | pad .. pad ]             captured size S >= B
    src:     [ 0 1 .. B-1         | 0 .. 0     ]             whose k/v each row writes
    slot:    [ each row's own     | row 0's    ]             where it writes them
    pages:   [ each row's context | row 0's first page, 1 token ]

Only dense models are captured: the MoE layer counts its experts' tokens on the host
(engine/model/moe.py), a sync a graph cannot hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.attention import resolve_backend
from engine.attention.base import AttentionBackend, BatchLayout
from engine.compiled import capture_sizes, decode_only, decode_rows
from engine.model.llama import LlamaModel
from engine.scheduler import ScheduledChunk

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

log = logging.getLogger(__name__)

_WORKSPACE_BYTES = 128 << 20
# flashinfer's CUDA-core decode kernels exist for groups of query heads per KV head up to
# 4 (and 6, 8); wider groups run faster on its tensor-core kernel, as vLLM chooses.
_CUDA_CORE_MAX_GROUP = 4


@dataclass(frozen=True, slots=True)
class DecodeRows:
    """One decode step's inputs, padded to a captured size (module docstring). Host arrays,
    int64 except the page table's, which flashinfer wants as int32."""

    ids: np.ndarray  # [S]
    positions: np.ndarray  # [S]
    src: np.ndarray  # [S] the row whose k/v this row writes
    blocks: np.ndarray  # [S] block and in-block offset it writes them at
    offsets: np.ndarray  # [S]
    kv_indptr: np.ndarray  # [S + 1] int32: row i's pages are kv_indices[indptr[i]:indptr[i+1]]
    kv_indices: np.ndarray  # [total pages] int32
    last_page_len: np.ndarray  # [S] int32: tokens in each row's last page

    @classmethod
    def pad(
        cls,
        size: int,
        ids: Sequence[int],
        positions: Sequence[int],
        tables: Sequence[Sequence[int]],
        block_size: int,
    ) -> DecodeRows:
        """Rows of `ids` at `positions` (each row's context is positions + 1 tokens, in the
        blocks of its table), padded to `size` with copies of row 0. With no rows at all
        (capture), row 0 is a stand-in at block 0, position 0."""
        n = len(ids)
        if n > size:
            raise ValueError(f"{n} rows do not fit a graph of {size}")
        if n == 0:
            ids, positions, tables = [0], [0], [[0]]
        pad = size - len(ids)
        pos = np.asarray(positions, dtype=np.int64)
        used = [list(t[: p // block_size + 1]) for t, p in zip(tables, positions, strict=True)]
        pages = used + [used[0][:1]] * pad
        return cls(
            ids=np.asarray([*ids] + [ids[0]] * pad, dtype=np.int64),
            positions=np.concatenate([pos, np.full(pad, pos[0])]),
            src=np.asarray(list(range(len(ids))) + [0] * pad, dtype=np.int64),
            blocks=np.asarray([u[-1] for u in used] + [used[0][-1]] * pad, dtype=np.int64),
            offsets=np.concatenate([pos % block_size, np.full(pad, pos[0] % block_size)]),
            kv_indptr=np.cumsum([0] + [len(p) for p in pages], dtype=np.int32),
            kv_indices=np.asarray([b for p in pages for b in p], dtype=np.int32),
            last_page_len=np.asarray(
                [p % block_size + 1 for p in positions] + [1] * pad, dtype=np.int32
            ),
        )


class _GraphAttention(AttentionBackend):
    """Attention inside a captured graph: reads its rows from the graph's static buffers."""

    name = "cuda-graph-decode"

    def __init__(
        self, kv_cache: torch.Tensor, block_size: int, wrapper: object, inputs: torch.Tensor
    ) -> None:
        self.kv_cache, self.block_size, self.wrapper = kv_cache, block_size, wrapper
        self.src, self.blocks, self.offsets = inputs[2], inputs[3], inputs[4]

    def prepare(self, layout: BatchLayout) -> None:  # pragma: no cover - never called
        raise NotImplementedError("a captured decode step is planned by CudaGraphDecode")

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        self.write_kv(layer, k[self.src], v[self.src], self.blocks, self.offsets)
        pages = (self.kv_cache[:, layer, 0], self.kv_cache[:, layer, 1])
        out: torch.Tensor = self.wrapper.run(q, pages)  # type: ignore[attr-defined]
        return out


class _Graph:
    """One captured size: its static inputs, its flashinfer plan and its graph."""

    def __init__(self, runner: CudaGraphDecode, size: int, pool: _POOL_HANDLE) -> None:
        import flashinfer

        cfg, dev = runner.model.cfg, runner.kv_cache.device
        self.runner, self.size = runner, size
        # inputs: rows ids, positions, src, blocks, offsets; one pinned host copy of them
        self.host = torch.zeros((5, size), dtype=torch.long, pin_memory=True)
        self.inputs = torch.zeros((5, size), dtype=torch.long, device=dev)

        def i32(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.int32, device=dev)

        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            runner.workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=cfg.num_heads // cfg.num_kv_heads > _CUDA_CORE_MAX_GROUP,
            paged_kv_indptr_buffer=i32(size + 1),
            paged_kv_indices_buffer=i32(size * runner.max_blocks),
            paged_kv_last_page_len_buffer=i32(size),
        )
        attn = _GraphAttention(runner.kv_cache, runner.block_size, self.wrapper, self.inputs)
        self.load(DecodeRows.pad(size, [], [], [], runner.block_size))
        model = runner.model
        stream = torch.cuda.Stream(dev)  # warm up off the capturing stream, as torch asks
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            model.logits(model(self.inputs[0], self.inputs[1], attn))
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = model.logits(model(self.inputs[0], self.inputs[1], attn))

    def load(self, rows: DecodeRows) -> None:
        """Fill the static inputs and plan the attention for `rows` (host work, before the
        replay: flashinfer's plan cannot run inside a graph)."""
        cfg = self.runner.model.cfg
        host = self.host.numpy()
        for i, a in enumerate((rows.ids, rows.positions, rows.src, rows.blocks, rows.offsets)):
            host[i] = a
        self.inputs.copy_(self.host, non_blocking=True)
        self.wrapper.plan(
            torch.from_numpy(rows.kv_indptr),
            torch.from_numpy(rows.kv_indices),
            torch.from_numpy(rows.last_page_len),
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            self.runner.block_size,
            q_data_type=self.runner.kv_cache.dtype,
            kv_data_type=self.runner.kv_cache.dtype,
            sm_scale=cfg.head_dim**-0.5,
        )


class CudaGraphDecode:
    """Decode-only steps replayed from a CUDA graph per captured batch size; the same
    interface as engine.compiled.CompiledDecode, its CPU twin."""

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: torch.Tensor,
        block_size: int,
        max_num_seqs: int,
        sizes: Sequence[int] | None = None,
    ) -> None:
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.sizes = capture_sizes(max_num_seqs, sizes)
        self.max_blocks = -(-model.cfg.max_position_embeddings // block_size)
        self.startup_s = 0.0
        self.workspace = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=kv_cache.device)
        self._graphs: dict[int, _Graph] = {}

    @staticmethod
    def supported(model: LlamaModel, kv_cache: torch.Tensor) -> bool:
        """A dense model over a 16-bit cache on CUDA, with flashinfer installed."""
        return not model.cfg.moe_layers and resolve_backend("auto", kv_cache) == "flashinfer"

    def fits(self, chunks: Sequence[ScheduledChunk]) -> bool:
        return decode_only(chunks, self.sizes[-1])

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every size, largest first so the smaller ones reuse its memory pool.
        Writes only block 0's first slot (a stand-in row: no request holds a block yet).
        Returns the seconds it took, also kept in `startup_s`."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in sorted(self.sizes, reverse=True):
            self._graphs[size] = _Graph(self, size, pool)
        torch.cuda.synchronize(self.kv_cache.device)
        self.startup_s = time.perf_counter() - start
        log.info("captured CUDA graphs for batch sizes %s in %.1f s", self.sizes, self.startup_s)
        return self.startup_s

    @torch.inference_mode()
    def run(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """One decode step (`fits(chunks)`): float32 logits [len(chunks), vocab]."""
        size, ids, positions, tables = decode_rows(chunks, self.sizes)
        graph = self._graphs[size]
        graph.load(DecodeRows.pad(size, ids, positions, tables, self.block_size))
        graph.graph.replay()
        # a copy: the graph's output buffer is overwritten by the next replay
        return graph.logits[: len(chunks)].clone()
