"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, SmolLM) over a flat batch.

Tokens of all scheduled sequences are concatenated: hidden states are [N, hidden]. The
attention backend knows which rows belong to which sequence. Norms, RoPE and the MLP follow
Hugging Face's reference arithmetic step by step (fp32 RMS statistics, rotate-half RoPE in
the activation dtype) so greedy outputs match it token for token in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend
from engine.model.config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, D]; cos/sin: [N, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
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
        self.gate_up_weight = nn.Parameter(
            torch.empty(2 * cfg.intermediate_size, h), requires_grad=False
        )
        self.down_weight = nn.Parameter(torch.empty(h, cfg.intermediate_size), requires_grad=False)
        self.input_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.post_attn_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.q_norm = nn.Parameter(torch.empty(d), requires_grad=False) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.empty(d), requires_grad=False) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionBackend,
        layer: int,
    ) -> torch.Tensor:
        cfg, n = self.cfg, x.shape[0]
        eps = cfg.rms_norm_eps
        h = rms_norm(x, self.input_norm, eps)
        qkv = F.linear(h, self.qkv_weight, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, cfg.num_heads, cfg.head_dim)
        k = k.view(n, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(n, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, eps), rms_norm(k, self.k_norm, eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = attn.forward(layer, q, k, v).reshape(n, self.q_size)
        x = x + F.linear(o, self.o_weight)
        h = rms_norm(x, self.post_attn_norm, eps)
        gate, up = F.linear(h, self.gate_up_weight).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down_weight)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        )
        # A plain attribute, not a buffer: RoPE frequencies stay float32 whatever the
        # weights' dtype (as in Hugging Face), so `.to(dtype)` must not round them.
        self.inv_freq = rope_inv_freq(cfg)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        """input_ids, positions: [N] -> final hidden states [N, hidden] (normed)."""
        x = F.embedding(input_ids, self.embed)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None, :], emb.sin().to(x.dtype)[:, None, :]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn, i)
        return rms_norm(x, self.norm, self.cfg.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, hidden] -> float32 logits [n, vocab]."""
        weight = self.embed if self.lm_head is None else self.lm_head
        return F.linear(hidden, weight).float()
