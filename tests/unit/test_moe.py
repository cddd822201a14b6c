"""The mixture-of-experts MLP (engine/model/moe.py): grouped by expert, it computes what a
token-by-token loop over each token's chosen experts computes; and which layers are sparse."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model.config import ModelConfig
from engine.model.moe import SparseMoE
from engine.model.ops import TorchOps

HF_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "num_experts": 8,
    "num_experts_per_tok": 3,
    "moe_intermediate_size": 16,
    "norm_topk_prob": True,
    "decoder_sparse_step": 2,
    "mlp_only_layers": [3],
}


def _moe(seed: int = 0) -> SparseMoE:
    moe = SparseMoE(ModelConfig.from_hf(HF_CONFIG, "test"))
    g = torch.Generator().manual_seed(seed)
    for p in moe.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    return moe


def _per_token(moe: SparseMoE, h: torch.Tensor) -> torch.Tensor:
    """The plain reading: each token, each of its experts, one at a time."""
    weights, experts = moe.route(h, TorchOps())
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for w, e in zip(weights[t], experts[t], strict=True):
            gate, up = F.linear(h[t], moe.gate_up[e]).chunk(2)
            out[t] += w * F.linear(F.silu(gate) * up, moe.down[e])
    return out


def test_grouped_experts_equal_a_per_token_loop() -> None:
    moe = _moe()
    h = torch.randn(37, 32, generator=torch.Generator().manual_seed(1))
    weights, experts = moe.route(h, TorchOps())
    assert experts.shape == (37, 3) and len(set(experts.flatten().tolist())) > 3
    torch.testing.assert_close(weights.sum(-1), torch.ones(37))  # norm_topk_prob
    torch.testing.assert_close(moe(h, TorchOps()), _per_token(moe, h), rtol=1e-5, atol=1e-5)


def test_sparse_layers_follow_transformers_rule() -> None:
    cfg = ModelConfig.from_hf(HF_CONFIG, "test")
    # (i + 1) a multiple of decoder_sparse_step, and not in mlp_only_layers
    assert cfg.moe_layers == (1, 5)
    saved = {**HF_CONFIG, "num_local_experts": 8}  # transformers 5's save_pretrained name
    del saved["num_experts"]
    assert ModelConfig.from_hf(saved, "test").num_experts == 8
    dense = {k: v for k, v in HF_CONFIG.items() if k != "num_experts"}
    assert ModelConfig.from_hf(dense, "test").moe_layers == ()
