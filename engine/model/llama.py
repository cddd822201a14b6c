"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE, MiniMax-M2, SmolLM)
over a flat batch.

Tokens of all scheduled sequences are concatenated: hidden states are [N, hidden]. The
attention backend knows which rows belong to which sequence. Norms, RoPE and the MLP follow
Hugging Face's reference arithmetic step by step (fp32 RMS statistics, rotate-half RoPE in
the activation dtype) so greedy outputs match it token for token in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend
from engine.model.config import ModelConfig
from engine.model.moe import SparseMoE
from engine.model.ops import TorchOps
from engine.model.quant import QuantizedWeight


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.rotary_dim or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if not cfg.rope_scaling:
        return inv
    # llama3: long wavelengths are slowed by `factor`, short ones kept, a smooth band between.
    s = dict(cfg.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_mid, mid, scaled)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.q_size, self.kv_size = cfg.num_heads * d, cfg.num_kv_heads * d
        # Fused projections: one GEMM for q|k|v and one for gate|up.
        self.qkv_weight = nn.Parameter(
            torch.empty(self.q_size + 2 * self.kv_size, h), requires_grad=False
        )
        self.qkv_bias = (
            nn.Parameter(torch.empty(self.q_size + 2 * self.kv_size), requires_grad=False)
            if cfg.qkv_bias
            else None
        )
        self.o_weight = nn.Parameter(torch.empty(h, self.q_size), requires_grad=False)
        # the MLP: dense, or routed to experts (engine/model/moe.py)
        self.moe = SparseMoE(cfg) if index in cfg.moe_layers else None
        self.gate_up_weight: nn.Parameter | None = None
        self.down_weight: nn.Parameter | None = None
        if self.moe is None:
            inter = cfg.intermediate_size
            self.gate_up_weight = nn.Parameter(torch.empty(2 * inter, h), requires_grad=False)
            self.down_weight = nn.Parameter(torch.empty(h, inter), requires_grad=False)
        # tensor parallelism (engine/parallel): this rank's partial sums, summed over ranks
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.tp_size = 1
        self.input_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.post_attn_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.q_norm: nn.Parameter | None = None
        self.k_norm: nn.Parameter | None = None
        if cfg.qk_norm:  # per head (Qwen3), or across all heads (MiniMax-M2)
            q_norm, k_norm = (self.q_size, self.kv_size) if cfg.qk_norm_across_heads else (d, d)
            self.q_norm = nn.Parameter(torch.empty(q_norm), requires_grad=False)
            self.k_norm = nn.Parameter(torch.empty(k_norm), requires_grad=False)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionBackend,
        layer: int,
        ops: TorchOps,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the residual stream before this layer, with the previous layer's output
        `delta` not yet added (the add is fused into this layer's first norm). Returns
        (x + delta + attention output, MLP output): the next layer's x and delta. `keep`:
        the only rows whose outputs are wanted (None: all); every row still attends and
        writes its keys and values."""
        cfg, n = self.cfg, x.shape[0]
        eps = cfg.rms_norm_eps
        x, h = ops.add_rms_norm(x, delta, self.input_norm, eps)
        qkv = ops.linear(h, self.qkv_weight, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, cfg.num_heads, cfg.head_dim)
        k = k.view(n, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(n, cfg.num_kv_heads, cfg.head_dim)
        q, k = self._rope(*self._qk_norm(q, k, ops), cos, sin, ops)
        o = attn.forward(layer, q, k, v).reshape(n, self.q_size)
        if keep is not None:
            o, x = o[keep], x[keep]
        attn_out = self._sum(ops.linear(o, self.o_weight))
        x, h = ops.add_rms_norm(x, attn_out, self.post_attn_norm, eps)
        if self.moe is not None:
            return x, self._sum(self.moe(h, ops))
        mlp = ops.linear(ops.silu_and_mul(ops.linear(h, self.gate_up_weight)), self.down_weight)
        return x, self._sum(mlp)

    def _sum(self, partial: torch.Tensor) -> torch.Tensor:
        return partial if self.reduce is None else self.reduce(partial)

    def _qk_norm(
        self, q: torch.Tensor, k: torch.Tensor, ops: TorchOps
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.q_norm is None or self.k_norm is None:
            return q, k
        eps = self.cfg.rms_norm_eps
        if not self.cfg.qk_norm_across_heads:
            return ops.rms_norm(q, self.q_norm, eps), ops.rms_norm(k, self.k_norm, eps)
        n = q.shape[0]
        norm = ops.rms_norm if self.reduce is None else self._sharded_rms_norm
        q2 = norm(q.reshape(n, self.q_size), self.q_norm, eps).view(q.shape)
        return q2, norm(k.reshape(n, self.kv_size), self.k_norm, eps).view(k.shape)

    def _sharded_rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm over a vector split across the ranks: the squares summed over all."""
        assert self.reduce is not None
        h = x.to(torch.float32)
        squares = self.reduce(h.pow(2).sum(-1, keepdim=True))
        h = h * torch.rsqrt(squares / (x.shape[-1] * self.tp_size) + eps)
        return weight * h.to(x.dtype)

    @staticmethod
    def _rope(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ops: TorchOps
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = cos.shape[-1]
        if r == q.shape[-1]:
            return ops.rope(q, k, cos, sin)
        # partial rotary: the first r dims of each head turn, the rest pass unchanged
        q_rot, k_rot = ops.rope(q[..., :r], k[..., :r], cos, sin)
        return torch.cat([q_rot, q[..., r:]], dim=-1), torch.cat([k_rot, k[..., r:]], dim=-1)

    def dense_weights(self) -> list[torch.Tensor]:
        """The 2-D weights its GEMMs read (an expert's are slices of a stacked tensor)."""
        mlp = [self.gate_up_weight, self.down_weight] if self.moe is None else []
        return [w for w in (self.qkv_weight, self.o_weight, *mlp) if w is not None]

    @property
    def widest_weight(self) -> torch.Tensor:
        """The GEMM shape that dominates a step: gate|up, or q|k|v where experts do the MLP."""
        return self.gate_up_weight if self.gate_up_weight is not None else self.qkv_weight


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        )
        # A plain attribute, not a buffer: RoPE frequencies stay float32 whatever the
        # weights' dtype (as in Hugging Face), so `.to(dtype)` must not round them.
        self.inv_freq = rope_inv_freq(cfg)
        # Elementwise kernels; engine/runner.py swaps in NativeOps where they are built.
        self.ops = TorchOps()
        # A GGUF model's quantized blocks of its weights, by parameter name (e.g.
        # "layers.0.qkv_weight"); engine/runner.py decides whether GEMMs read them.
        self.quantized: dict[str, QuantizedWeight] = {}

    def shard_over(self, reduce: Callable[[torch.Tensor], torch.Tensor], size: int) -> None:
        """This model holds one rank's shard of `size` (engine/parallel/shard.py): each
        layer sums its partial outputs over the ranks with `reduce`."""
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer)
            layer.reduce, layer.tp_size = reduce, size

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionBackend,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, positions: [N] -> final hidden states [N, hidden] (normed), or only
        the rows `keep` indexes, in its order. Nothing reads the other rows' last-layer
        outputs (the cache's keys and values come from that layer's qkv GEMM), so they
        skip its output projection and MLP (llama.cpp's graphs drop them after the output
        projection): for a prefill, 2.8% less GEMM work in SmolLM2."""
        x = F.embedding(input_ids, self.embed)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # [N, D]
        delta: torch.Tensor | None = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, delta = layer(x, delta, cos, sin, attn, i, self.ops, keep if i == last else None)
        return self.ops.add_rms_norm(x, delta, self.norm, self.cfg.rms_norm_eps)[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, hidden] -> float32 logits [n, vocab]."""
        weight = self.embed if self.lm_head is None else self.lm_head
        return self.ops.linear(hidden, weight).float()
