"""The decode step, compiled: one graph for the whole forward pass of a batch of sequences
that each decode one token, captured at start-up for a fixed list of batch sizes (as vLLM
does with its compile sizes and CUDA graphs).

A real batch is padded to the next captured size. Padding rows write nothing (slot -1)
and attend to nothing (context length 0), so they cost a little compute and no state:

    rows:      [ real 0 .. real B-1 | pad .. pad ]          captured size S >= B
    slots:     [ block*bs+offset    | -1  .. -1  ]          where each new K/V row goes
    lens:      [ context lengths    |  0  ..  0  ]
    tables:    [ block ids, padded to max_blocks columns with 0 ]

On the CPU the graph is inductor's C++ backend with frozen weights; the GEMMs are the ones
the eager step uses (engine/model/choose.py: a GGUF's blocks and our bf16 panels, each
looked up by the weight's id(), a constant to the tracer, and chosen by row count, which
a captured size fixes; where the eager step has oneDNN on its packed weights, the graph
has the plain GEMM and inductor packs it), and the attention is our C++ kernels
(torch.ops.tandem.*), opaque inside the graph: what the graph removes is the Python
between them. Tracing plain F.linear everywhere (before 2026-12-05) had made the step
slower than eager here; with the eager step's GEMMs it is on par (docs/benchmarks.md).
CUDA has its own capture (engine/cuda_graph.py: CUDA graphs around the eager forward,
with flashinfer's decode kernel). Inductor keeps an on-disk cache (/tmp/torchinductor_*),
but a second start-up measured no faster here (45 s cold, 60 s warm for batch size 1,
both on a busy machine): tracing dominates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend, BatchLayout
from engine.model.llama import LlamaModel
from engine.model.onednn import PackedLinear
from engine.model.ops import NativeOps
from engine.model.panels import PanelLinear
from engine.model.quant import QuantLinear
from engine.scheduler import ScheduledChunk

log = logging.getLogger(__name__)

# Batch sizes captured by default, cut at the scheduler's max_num_seqs (always included).
DEFAULT_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def capture_sizes(max_num_seqs: int, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The sizes to capture: each of `sizes` (default DEFAULT_SIZES) up to max_num_seqs.
    Without explicit sizes max_num_seqs itself is captured too, so every batch fits."""
    if sizes is not None:
        return tuple(sorted({s for s in sizes if s <= max_num_seqs}))
    return tuple(sorted({s for s in DEFAULT_SIZES if s < max_num_seqs} | {max_num_seqs}))


def traceable(linear: object) -> bool:
    """A GEMM chain a graph can trace: our kernels on copies looked up by id() down to
    F.linear. Not UpcastLinear, whose float32 copies are made on first use."""
    while isinstance(linear, (QuantLinear, PanelLinear, PackedLinear)):
        linear = linear.fallback
    return linear is F.linear


def decode_only(chunks: Sequence[ScheduledChunk], largest: int) -> bool:
    """A step a captured graph can run: decodes only (one new token each, all sampling),
    no more of them than the largest captured size."""
    return 0 < len(chunks) <= largest and all(c.num_tokens == 1 and c.samples for c in chunks)


def decode_rows(
    chunks: Sequence[ScheduledChunk], sizes: Sequence[int]
) -> tuple[int, list[int], list[int], list[list[int]]]:
    """A decode-only step's captured size (the smallest of `sizes` it fits) and its rows:
    each request's newest token, that token's position and the request's block table."""
    size = next(s for s in sizes if s >= len(chunks))
    ids = [c.request.token_ids[c.start] for c in chunks]
    return size, ids, [c.start for c in chunks], [c.request.block_ids for c in chunks]


class _DecodeAttention(AttentionBackend):
    """Attention for one-token queries, built inside the compiled function from its tensor
    arguments (so they are graph inputs, not constants)."""

    name = "compiled-decode"

    def __init__(
        self,
        kv_cache: torch.Tensor,
        scale: float,
        tables: torch.Tensor,  # [S, max_blocks] int64
        lens: torch.Tensor,  # [S] int64
        slots: torch.Tensor,  # [S] int64
    ) -> None:
        self.kv_cache, self.scale = kv_cache, scale
        self.tables, self.lens, self.write_slots = tables, lens, slots

    def prepare(self, layout: BatchLayout) -> None:  # pragma: no cover - never called
        raise NotImplementedError("the compiled decode step takes its layout as tensors")

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        torch.ops.tandem.write_kv(self.kv_cache, layer, k, v, self.write_slots)
        return torch.ops.tandem.paged_decode(
            q, self.kv_cache, layer, self.tables, self.lens, self.scale
        )


class CompiledDecode:
    """Decode-only steps through a compiled graph per captured batch size."""

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: torch.Tensor,
        block_size: int,
        max_num_seqs: int,
        sizes: Sequence[int] | None = None,
    ) -> None:
        cfg = model.cfg
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.sizes = capture_sizes(max_num_seqs, sizes)
        self.max_blocks = -(-cfg.max_position_embeddings // block_size)
        self.scale = cfg.head_dim**-0.5
        self.startup_s = 0.0
        # dynamic=False: one specialised graph per captured size, never a recompile for a
        # new context length (tables are always max_blocks wide).
        # freezing: weights become constants that inductor pre-packs for its CPU GEMMs.
        self._fn = torch.compile(
            self._forward, dynamic=False, fullgraph=True, options={"freezing": True}
        )

    @staticmethod
    def supported(model: LlamaModel, kv_cache: torch.Tensor) -> bool:
        """The graph calls our C++ attention: CPU models running NativeOps, on GEMMs it
        can trace (CUDA: engine/cuda_graph.py)."""
        cpu_native = kv_cache.device.type == "cpu" and isinstance(model.ops, NativeOps)
        return cpu_native and traceable(model.ops.linear)

    def fits(self, chunks: Sequence[ScheduledChunk]) -> bool:
        return decode_only(chunks, self.sizes[-1])

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        lens: torch.Tensor,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        attn = _DecodeAttention(self.kv_cache, self.scale, tables, lens, slots)
        return self.model.logits(self.model(ids, positions, attn))

    @torch.inference_mode()
    def capture(self) -> float:
        """Compile every captured size now (padding rows only: nothing is written). Returns
        the seconds it took, also kept in `startup_s`."""
        start = time.perf_counter()
        for size in self.sizes:
            self._fn(*self._inputs(size, [], [], []))
        self.startup_s = time.perf_counter() - start
        log.info("compiled decode step for batch sizes %s in %.1f s", self.sizes, self.startup_s)
        return self.startup_s

    def run(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """One decode step (`fits(chunks)`): float32 logits [len(chunks), vocab]."""
        out = self._fn(*self._inputs(*decode_rows(chunks, self.sizes)))
        return out[: len(chunks)]

    def _inputs(
        self,
        size: int,
        ids: list[int],
        positions: list[int],
        tables: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, ...]:
        n, bs, dev = len(ids), self.block_size, self.kv_cache.device
        pad = size - n
        table = np.zeros((size, self.max_blocks), dtype=np.int64)
        for i, t in enumerate(tables):
            table[i, : len(t)] = t
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions, strict=True)]
        return (
            torch.tensor(ids + [0] * pad, dtype=torch.long, device=dev),
            torch.tensor(positions + [0] * pad, dtype=torch.long, device=dev),
            torch.from_numpy(table).to(dev),
            torch.tensor([p + 1 for p in positions] + [0] * pad, dtype=torch.long, device=dev),
            torch.tensor(slots + [-1] * pad, dtype=torch.long, device=dev),
        )
