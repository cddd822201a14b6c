"""FlashInfer paged attention for CUDA: one batched prefill/append kernel for the whole step
(decode rows are queries of length 1), planned once per step in `prepare` and run for
every layer.

Importable everywhere; `flashinfer` itself is imported only when the backend is built, which
`engine.attention.resolve_backend` does only on CUDA with flashinfer installed.
"""

from __future__ import annotations

import torch

from engine.attention.base import AttentionBackend, BatchLayout

_WORKSPACE_BYTES = 128 << 20


class FlashInferAttention(AttentionBackend):
    name = "flashinfer"

    def __init__(
        self, kv_cache: torch.Tensor, block_size: int, num_heads: int, scale: float
    ) -> None:
        super().__init__(kv_cache, block_size, num_heads, scale)
        if kv_cache.device.type != "cuda":
            raise ValueError("the flashinfer backend needs the KV cache on a CUDA device")
        import flashinfer

        workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=kv_cache.device)
        # NHD: each layer's pages are [block_size, kv_heads, head_dim], our cache's inner layout.
        self._wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        self._slots: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, layout: BatchLayout) -> None:
        bs, dev = self.block_size, self.kv_cache.device
        qo_indptr, kv_indptr, last_len = [0], [0], []
        kv_indices: list[int] = []
        for s in layout.seqs:
            n_blocks = -(-s.context_len // bs)
            qo_indptr.append(qo_indptr[-1] + s.query_len)
            kv_indices += s.block_ids[:n_blocks]
            kv_indptr.append(len(kv_indices))
            last_len.append(s.context_len - (n_blocks - 1) * bs)
        blocks, offsets = self.slots(layout, bs)
        self._slots = (torch.tensor(blocks, device=dev), torch.tensor(offsets, device=dev))
        _, _, _, _, kv_heads, head_dim = self.kv_cache.shape

        def i32(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int32, device=dev)

        self._wrapper.plan(
            qo_indptr=i32(qo_indptr),
            paged_kv_indptr=i32(kv_indptr),
            paged_kv_indices=i32(kv_indices),
            paged_kv_last_page_len=i32(last_len),
            num_qo_heads=self.num_heads,
            num_kv_heads=kv_heads,
            head_dim_qk=head_dim,
            page_size=bs,
            causal=True,
            sm_scale=self.scale,
            q_data_type=self.kv_cache.dtype,
            kv_data_type=self.kv_cache.dtype,
        )

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        assert self._slots is not None, "prepare() must run before forward()"
        self.write_kv(layer, k, v, *self._slots)
        # Per-layer views over the block-major cache: the page dimension is strided.
        pages = (self.kv_cache[:, layer, 0], self.kv_cache[:, layer, 1])
        return self._wrapper.run(q, pages)
