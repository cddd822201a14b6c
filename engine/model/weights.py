"""Turn Hugging Face-named tensors into our fused model's parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch

from engine.model.config import ModelConfig, ModelLoadError
from engine.model.llama import DecoderLayer, LlamaModel
from engine.model.quant import QuantizedWeight


def load_into(
    model: LlamaModel,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    blocks: Mapping[str, QuantizedWeight] | None = None,
) -> None:
    """Copy `tensors` (HF names, e.g. model.layers.0.self_attn.q_proj.weight) into `model`,
    fusing q|k|v and gate|up, and the quantized `blocks` of those weights (GGUF) into
    `model.quantized`, fused alike. Raises ModelLoadError naming the first missing tensor."""
    cfg: ModelConfig = model.cfg
    blocks = blocks or {}

    def keep_blocks(param: str, *names: str) -> None:
        q = QuantizedWeight.concat([blocks.get(n) for n in names])
        if q is not None:
            model.quantized[param] = q

    def get(name: str) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{source}: tensor {name!r} is missing")
        return t

    def put(param: torch.Tensor | None, value: torch.Tensor, name: str) -> None:
        assert param is not None
        if tuple(param.shape) != tuple(value.shape):
            raise ModelLoadError(
                f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
            )
        param.data = value.to(param.dtype).contiguous()

    put(model.embed, get("model.embed_tokens.weight"), "embed_tokens")
    put(model.norm, get("model.norm.weight"), "norm")
    if model.lm_head is not None:
        put(model.lm_head, get("lm_head.weight"), "lm_head")
        keep_blocks("lm_head", "lm_head.weight")
    else:  # tied: the logits' GEMM reads the embedding
        keep_blocks("embed", "model.embed_tokens.weight")
    for i, module in enumerate(model.layers):
        layer = cast(DecoderLayer, module)
        p = f"model.layers.{i}."
        attn = p + "self_attn."
        qkv = [get(f"{attn}{x}_proj.weight") for x in "qkv"]
        put(layer.qkv_weight, torch.cat(qkv), f"{attn}qkv")
        keep_blocks(f"layers.{i}.qkv_weight", *(f"{attn}{x}_proj.weight" for x in "qkv"))
        if cfg.qkv_bias:
            put(
                layer.qkv_bias,
                torch.cat([get(f"{attn}{x}_proj.bias") for x in "qkv"]),
                f"{attn}qkv bias",
            )
        put(layer.o_weight, get(attn + "o_proj.weight"), attn + "o_proj")
        keep_blocks(f"layers.{i}.o_weight", attn + "o_proj.weight")
        if cfg.qk_norm:
            put(layer.q_norm, get(attn + "q_norm.weight"), attn + "q_norm")
            put(layer.k_norm, get(attn + "k_norm.weight"), attn + "k_norm")
        if layer.moe is not None:
            # Qwen3-MoE's names, or MiniMax-M2's (Mixtral's) on the Hub
            hub = p + "block_sparse_moe.gate.weight" in tensors
            mlp = p + ("block_sparse_moe." if hub else "mlp.")
            put(layer.moe.router_weight, get(mlp + "gate.weight"), mlp + "gate")
            if layer.moe.correction_bias is not None:
                bias = get(mlp + "e_score_correction_bias")
                put(layer.moe.correction_bias, bias, mlp + "e_score_correction_bias")
            count = cfg.local_experts or cfg.num_experts  # a rank's share, or all
            gate_up, down = _experts(tensors, mlp + "experts.", count, get)
            put(layer.moe.gate_up, gate_up, mlp + "experts gate|up")
            put(layer.moe.down, down, mlp + "experts down")
        else:
            gate, up = p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"
            put(layer.gate_up_weight, torch.cat([get(gate), get(up)]), p + "mlp.gate_up")
            keep_blocks(f"layers.{i}.gate_up_weight", gate, up)
            put(layer.down_weight, get(p + "mlp.down_proj.weight"), p + "mlp.down_proj")
            keep_blocks(f"layers.{i}.down_weight", p + "mlp.down_proj.weight")
        put(layer.input_norm, get(p + "input_layernorm.weight"), p + "input_layernorm")
        put(
            layer.post_attn_norm,
            get(p + "post_attention_layernorm.weight"),
            p + "post_attention_layernorm",
        )


def _experts(
    tensors: Mapping[str, torch.Tensor],
    prefix: str,
    count: int,
    get: Callable[[str], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's experts stacked: gate|up [experts, 2 x inter, hidden] and down [experts,
    hidden, inter]. Checkpoints on the Hub hold one tensor per expert and projection
    (`experts.E.gate_proj.weight`, or Mixtral's `experts.E.w1.weight` for gate, w3 up, w2
    down); transformers' own in-memory form holds them stacked (`experts.gate_up_proj`,
    `experts.down_proj`): any is read."""
    if prefix + "gate_up_proj" in tensors:
        return get(prefix + "gate_up_proj"), get(prefix + "down_proj")
    names = ("w1", "w3", "w2") if f"{prefix}0.w1.weight" in tensors else _PROJECTIONS
    gate, up, down = (f"{prefix}{{}}.{name}.weight" for name in names)
    gate_up = [torch.cat([get(gate.format(e)), get(up.format(e))]) for e in range(count)]
    return torch.stack(gate_up), torch.stack([get(down.format(e)) for e in range(count)])


_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
