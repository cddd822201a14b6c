"""The mixture-of-experts MLP (engine/model/moe.py): grouped by expert, it computes what a
token-by-token loop over each token's chosen experts computes; and which layers are sparse."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from engine.model import moe as moe_module
from engine.model.config import ModelConfig
from engine.model.moe import SparseMoE
from engine.model.ops import TorchOps
from tests.helpers.hf_reference import check_partial_rotary

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


@pytest.mark.parametrize("grouped_mm", [True, False])
def test_grouped_experts_equal_a_per_token_loop(
    grouped_mm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's grouped GEMM where it runs (here: a CPU in float32), a loop over the
    experts elsewhere: the same sums."""
    moe = _moe()
    h = torch.randn(37, 32, generator=torch.Generator().manual_seed(1))
    if grouped_mm:
        assert moe_module.grouped_mm_fits(h, moe.gate_up, moe.down)
    else:
        monkeypatch.setattr(moe_module, "grouped_mm_fits", lambda *_: False)
    weights, experts = moe.route(h, TorchOps())
    assert experts.shape == (37, 3) and len(set(experts.flatten().tolist())) > 3
    torch.testing.assert_close(weights.sum(-1), torch.ones(37))  # norm_topk_prob
    torch.testing.assert_close(moe(h, TorchOps()), _per_token(moe, h), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here; the CUDA grouped GEMM runs on GPUs"
)
def test_grouped_experts_on_cuda_equal_the_loop_in_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a GPU from Ampere, bfloat16 experts take torch's grouped GEMM: the loop's sums to
    bfloat16's precision."""
    moe = _moe().to("cuda", torch.bfloat16)
    h = torch.randn(37, 32, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    if not moe_module.grouped_mm_fits(h, moe.gate_up, moe.down):
        pytest.skip("this GPU is older than Ampere: torch's grouped GEMM does not run on it")
    grouped = moe(h, TorchOps())
    monkeypatch.setattr(moe_module, "grouped_mm_fits", lambda *_: False)
    torch.testing.assert_close(grouped, moe(h, TorchOps()), rtol=2e-2, atol=2e-2)


def test_sparse_layers_follow_transformers_rule() -> None:
    cfg = ModelConfig.from_hf(HF_CONFIG, "test")
    # (i + 1) a multiple of decoder_sparse_step, and not in mlp_only_layers
    assert cfg.moe_layers == (1, 5)
    saved = {**HF_CONFIG, "num_local_experts": 8}  # transformers 5's save_pretrained name
    del saved["num_experts"]
    assert ModelConfig.from_hf(saved, "test").num_experts == 8
    dense = {k: v for k, v in HF_CONFIG.items() if k != "num_experts"}
    assert ModelConfig.from_hf(dense, "test").moe_layers == ()


# MiniMax-M2's config.json on the Hub (MiniMaxAI/MiniMax-M2), cut to a small size: the
# fields that differ from transformers' own save (rotary_dim, scoring_func) kept as written.
MINIMAX_HUB_CONFIG = {
    "architectures": ["MiniMaxM2ForCausalLM"],
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rotary_dim": 8,
    "rope_theta": 5000000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "scoring_func": "sigmoid",
    "use_routing_bias": True,
    "use_qk_norm": True,
    "qk_norm_type": "per_layer",
}


def test_minimax_m2_config_reads_the_hubs_fields() -> None:
    cfg = ModelConfig.from_hf(MINIMAX_HUB_CONFIG, "test")
    assert (cfg.rotary_dim, cfg.rope_theta) == (8, 5e6)
    assert cfg.qk_norm and cfg.qk_norm_across_heads
    assert (cfg.router_scoring, cfg.norm_topk_prob) == ("sigmoid", True)
    assert (cfg.moe_intermediate_size, cfg.moe_layers) == (16, (0, 1, 2))  # every layer
    # transformers 5 saves the rotary part as a factor of the head instead
    saved = {k: v for k, v in MINIMAX_HUB_CONFIG.items() if k not in ("rotary_dim", "rope_theta")}
    saved["rope_parameters"] = {"rope_theta": 5e6, "partial_rotary_factor": 0.5}
    assert ModelConfig.from_hf(saved, "test").rotary_dim == 8
    full = {**MINIMAX_HUB_CONFIG, "rotary_dim": 16}
    assert ModelConfig.from_hf(full, "test").rotary_dim == 0  # 0: the whole head turns


def test_a_reference_that_turns_whole_heads_despite_rotary_dim_is_refused() -> None:
    # transformers up to 5.17 kept the Hub's rotary_dim but turned whole heads: every
    # MiniMax-M2 parity test then failed at the first token, whatever the engine did
    def saved(factor: float | None) -> SimpleNamespace:
        rope = {"rope_theta": 5e6} | ({} if factor is None else {"partial_rotary_factor": factor})
        return SimpleNamespace(rotary_dim=12, head_dim=24, rope_parameters=rope)

    check_partial_rotary(saved(0.5))
    check_partial_rotary(SimpleNamespace(head_dim=24, rope_parameters={}))  # no rotary_dim
    with pytest.raises(RuntimeError, match="rotary_dim says 12"):
        check_partial_rotary(saved(None))


def test_sigmoid_routing_chooses_by_biased_score_and_weighs_by_score() -> None:
    moe = SparseMoE(ModelConfig.from_hf(MINIMAX_HUB_CONFIG, "test"))
    moe.router_weight.data = torch.zeros(8, 32)
    moe.router_weight.data[:, 0] = torch.arange(8.0)  # expert e scores sigmoid(e * h[0])
    assert moe.correction_bias is not None
    moe.correction_bias.data = torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 0])  # lifts expert 0
    h = torch.zeros(1, 32)
    h[0, 0] = 1.0
    weights, experts = moe.route(h, TorchOps())
    # chosen: expert 0 (bias) and 7 (best score); weighed by sigmoid scores alone, renormed
    assert sorted(experts[0].tolist()) == [0, 7]
    s0, s7 = torch.sigmoid(torch.tensor(0.0)), torch.sigmoid(torch.tensor(7.0))
    want = {0: s0 / (s0 + s7), 7: s7 / (s0 + s7)}
    for w, e in zip(weights[0].tolist(), experts[0].tolist(), strict=True):
        assert abs(w - float(want[e])) < 1e-6


def test_a_rank_computes_its_own_experts_and_the_ranks_sum_to_the_whole() -> None:
    """Expert parallelism: two halves of the experts, each holding four whole experts,
    give partial outputs whose sum is the full layer's."""
    import dataclasses

    full = _moe()
    h = torch.randn(23, 32, generator=torch.Generator().manual_seed(2))
    parts = []
    for rank in range(2):
        cfg = dataclasses.replace(
            ModelConfig.from_hf(HF_CONFIG, "test"), first_expert=4 * rank, local_experts=4
        )
        half = SparseMoE(cfg)
        half.router_weight.data = full.router_weight.data
        half.gate_up.data = full.gate_up.data[4 * rank : 4 * rank + 4]
        half.down.data = full.down.data[4 * rank : 4 * rank + 4]
        parts.append(half(h, TorchOps()))
    assert all(p.abs().sum() > 0 for p in parts)
    torch.testing.assert_close(parts[0] + parts[1], full(h, TorchOps()), rtol=1e-5, atol=1e-5)
