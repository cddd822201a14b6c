"""The architecture of a Llama-family decoder, read from a Hugging Face config dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Architectures whose forward pass engine.model.llama implements, and what sets them apart.
SUPPORTED: dict[str, dict[str, bool]] = {
    "LlamaForCausalLM": {"qkv_bias": False, "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias": False, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias": True, "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias": False, "qk_norm": True},
    # Qwen3's attention; sparse MLPs of routed experts (engine/model/moe.py)
    "Qwen3MoeForCausalLM": {"qkv_bias": False, "qk_norm": True},
    # q and k normed across all heads, partial RoPE, experts chosen by sigmoid scores
    "MiniMaxM2ForCausalLM": {"qkv_bias": False, "qk_norm": True, "qk_norm_across_heads": True},
}


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the file and what was wrong."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # llama3-style scaling, as sorted items
    eos_token_ids: tuple[int, ...] = ()
    # RoPE turns the first `rotary_dim` dims of each head, the rest pass (0: all of them)
    rotary_dim: int = 0
    # one RMSNorm over all heads' q (and one over k's), not one per head (MiniMax-M2)
    qk_norm_across_heads: bool = False
    # mixture of experts (0 experts: none): the layers whose MLP routes each token to
    # `num_experts_per_tok` of `num_experts` experts of `moe_intermediate_size`
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # the chosen experts' weights renormalised to sum to 1
    moe_layers: tuple[int, ...] = ()
    # "softmax" over all experts; or "sigmoid" per expert, chosen by score plus a learned
    # correction bias and weighted by the score alone (MiniMax-M2, DeepSeek-V3)
    router_scoring: str = "softmax"
    # expert parallelism (engine/parallel/shard.py): this rank holds experts
    # [first_expert, first_expert + local_experts) whole; 0 local experts: all of them
    first_expert: int = 0
    local_experts: int = 0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def kv_bytes_per_token(self) -> int:
        """Per token, all layers, K and V, at 1 byte per element (multiply by dtype size)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED), None)
        if arch is None:
            raise ModelLoadError(
                f"{source}: unsupported architecture {archs or cfg.get('model_type')!r}; "
                f"supported: {', '.join(SUPPORTED)}"
            )
        traits = SUPPORTED[arch]
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        eos = cfg.get("eos_token_id")
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        # Sliding-window attention is not implemented: cap the context so results stay exact.
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if window:
            max_pos = min(max_pos, int(window))
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=traits["qkv_bias"] or bool(cfg.get("attention_bias", False)),
            qk_norm=traits["qk_norm"],
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
            qk_norm_across_heads=traits.get("qk_norm_across_heads", False),
            **_rope_fields(cfg, head_dim, source),
            **_moe_fields(cfg, arch),
        )


def _rope_fields(cfg: dict[str, Any], head_dim: int, source: str) -> dict[str, Any]:
    """rope_theta, llama3-style scaling and partial rotary, from either config layout
    (transformers 5's rope_parameters, or the older top-level fields)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(cfg.get("rope_theta") or rope.pop("rope_theta", None) or 10000.0)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"{source}: unsupported rope scaling {rope_type!r}")
    # the Hub's MiniMax-M2 config says rotary_dim; transformers saves the factor
    factor = float(rope.pop("partial_rotary_factor", 1.0))
    rotary = int(cfg.get("rotary_dim") or head_dim * factor)
    return {
        "rope_theta": theta,
        "rope_scaling": tuple(sorted(rope.items())) if rope_type == "llama3" else (),
        "rotary_dim": rotary if rotary != head_dim else 0,
    }


def _moe_fields(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """Qwen3-MoE's: layer i is sparse unless listed in mlp_only_layers, when (i + 1) is a
    multiple of decoder_sparse_step (transformers' rule). MiniMax-M2's: every layer, experts
    of intermediate_size, sigmoid scores always renormalised (its transformers code)."""
    # the Hub's configs say num_experts; transformers 5 saves num_local_experts
    experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    if not experts:
        return {}
    step, dense = int(cfg.get("decoder_sparse_step", 1)), set(cfg.get("mlp_only_layers") or ())
    layers = range(int(cfg["num_hidden_layers"]))
    minimax = arch == "MiniMaxM2ForCausalLM"
    return {
        "num_experts": experts,
        "num_experts_per_tok": int(cfg["num_experts_per_tok"]),
        "moe_intermediate_size": int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"]),
        "norm_topk_prob": minimax or bool(cfg.get("norm_topk_prob", False)),
        "moe_layers": tuple(i for i in layers if i not in dense and (i + 1) % step == 0),
        "router_scoring": "sigmoid" if minimax else "softmax",
    }
