"""Which slice of each weight a rank holds (Megatron's split, as vLLM and transformers' TP
plans make it): q, k, v, gate and up by output rows (whole heads, whole MLP columns), o
and down by input columns, so a layer needs one sum across ranks after its attention and
one after its MLP. Experts are split the same way inside each expert. Embeddings, norms,
the router and lm_head stay whole on every rank.
"""

from __future__ import annotations

import dataclasses

import torch

from engine.model.config import ModelConfig, ModelLoadError

_ROWS = ("q_proj.", "k_proj.", "v_proj.", "gate_proj.", "up_proj.", ".w1.", ".w3.")
_COLUMNS = ("o_proj.weight", "down_proj.weight", ".w2.weight")


def shard_config(cfg: ModelConfig, size: int, source: str) -> ModelConfig:
    """The model one rank of `size` runs: its share of the heads and MLP columns."""
    dims = {
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.moe_intermediate_size,
    }
    uneven = [f"{k} {v}" for k, v in dims.items() if v % size]
    if uneven:
        raise ModelLoadError(
            f"{source}: tensor parallel size {size} must divide {', '.join(uneven)}"
        )
    return dataclasses.replace(
        cfg,
        num_heads=cfg.num_heads // size,
        num_kv_heads=cfg.num_kv_heads // size,
        intermediate_size=cfg.intermediate_size // size,
        moe_intermediate_size=cfg.moe_intermediate_size // size,
    )


def shard_tensors(
    tensors: dict[str, torch.Tensor], cfg: ModelConfig, rank: int, size: int
) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors -> this rank's slices of them (the rest whole)."""
    return {name: _shard(name, t, cfg, rank, size) for name, t in tensors.items()}


def _shard(name: str, t: torch.Tensor, cfg: ModelConfig, rank: int, size: int) -> torch.Tensor:
    if name.endswith("experts.gate_up_proj"):  # stacked [experts, gate | up, hidden]
        gate, up = t.chunk(2, dim=1)
        return torch.cat([gate.chunk(size, 1)[rank], up.chunk(size, 1)[rank]], 1)
    if name.endswith("experts.down_proj"):  # stacked [experts, hidden, inter]
        return t.chunk(size, dim=2)[rank]
    if any(name.endswith(s) for s in _COLUMNS):
        return t.chunk(size, dim=1)[rank]
    across_heads_norm = cfg.qk_norm_across_heads and name.endswith(
        ("q_norm.weight", "k_norm.weight")
    )
    if across_heads_norm or any(s in name for s in _ROWS):
        return t.chunk(size, dim=0)[rank]
    return t
