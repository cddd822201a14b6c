"""Which slice of each weight a rank holds (Megatron's split, as vLLM and transformers' TP
plans make it): q, k, v, gate and up by output rows (whole heads, whole MLP columns), o
and down by input columns, so a layer needs one sum across ranks after its attention and
one after its MLP. Experts are split the same way inside each expert, or, with expert
parallelism, each rank holds whole experts (a contiguous share of them) and computes
only those: its MoE output is a partial sum like the rest. Embeddings, norms, the router
and lm_head stay whole on every rank.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from engine.model.config import ModelConfig, ModelLoadError

_ROWS = ("q_proj.", "k_proj.", "v_proj.", "gate_proj.", "up_proj.", ".w1.", ".w3.")
_COLUMNS = ("o_proj.weight", "down_proj.weight", ".w2.weight")
_EXPERT = re.compile(r"(.*\.experts\.)(\d+)(\..*)")  # the Hub's experts.E.w1.weight


def shard_config(
    cfg: ModelConfig, size: int, source: str, rank: int = 0, expert_parallel: bool = False
) -> ModelConfig:
    """The model rank `rank` of `size` runs: its share of the heads and MLP columns, and
    with `expert_parallel` its share of the experts, whole (else a share of each)."""
    experts = expert_parallel and cfg.num_experts > 0
    dims = {"num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads}
    dims["intermediate_size"] = cfg.intermediate_size
    dims["num_experts" if experts else "moe_intermediate_size"] = (
        cfg.num_experts if experts else cfg.moe_intermediate_size
    )
    uneven = [f"{k} {v}" for k, v in dims.items() if v % size]
    if uneven:
        raise ModelLoadError(
            f"{source}: tensor parallel size {size} must divide {', '.join(uneven)}"
        )
    local_experts = cfg.num_experts // size if experts else 0
    return dataclasses.replace(
        cfg,
        num_heads=cfg.num_heads // size,
        num_kv_heads=cfg.num_kv_heads // size,
        intermediate_size=cfg.intermediate_size // size,
        moe_intermediate_size=cfg.moe_intermediate_size // (1 if experts else size),
        first_expert=rank * local_experts,
        local_experts=local_experts,
    )


def shard_tensors(
    tensors: dict[str, torch.Tensor], local: ModelConfig, rank: int, size: int
) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors -> this rank's slices of them (the rest whole), for the
    model `local` (shard_config's)."""
    out = {}
    for name, t in tensors.items():
        if local.local_experts and ".experts." in name:
            share = _expert_share(name, t, local)
            if share is not None:
                out[share[0]] = share[1]
        else:
            out[name] = _shard(name, t, local, rank, size)
    return out


def _expert_share(
    name: str, t: torch.Tensor, local: ModelConfig
) -> tuple[str, torch.Tensor] | None:
    """Expert parallelism: this rank's experts whole, numbered from 0; None for another's."""
    first, count = local.first_expert, local.local_experts
    numbered = _EXPERT.match(name)
    if numbered is None:  # transformers' stacked form, [experts, ...]
        return name, t[first : first + count]
    e = int(numbered.group(2)) - first
    return (f"{numbered.group(1)}{e}{numbered.group(3)}", t) if 0 <= e < count else None


def _shard(name: str, t: torch.Tensor, cfg: ModelConfig, rank: int, size: int) -> torch.Tensor:
    if name.endswith("experts.gate_up_proj"):  # stacked [experts, gate | up, hidden]
        gate, up = t.chunk(2, dim=1)
        return torch.cat([gate.chunk(size, 1)[rank], up.chunk(size, 1)[rank]], 1)
    if name.endswith("experts.down_proj"):  # stacked [experts, hidden, inter]
        return t.chunk(size, dim=2)[rank]
    if any(name.endswith(s) for s in _COLUMNS):
        return t.chunk(size, dim=1)[rank]
    across_heads = cfg.qk_norm_across_heads and name.endswith(("q_norm.weight", "k_norm.weight"))
    if across_heads or any(s in name for s in _ROWS):
        return t.chunk(size, dim=0)[rank]
    return t
