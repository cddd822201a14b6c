"""Read a GGUF file: dequantize its tensors and rebuild a Hugging Face-style config.

llama.cpp's converter permutes the rows of Llama's q/k projections so its interleaved RoPE
matches; we use rotate-half RoPE like Hugging Face, so those rows are permuted back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model.config import ModelConfig, ModelLoadError

_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    import gguf  # heavy import, only when a GGUF is loaded

    try:
        reader = gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e})") from None
    meta = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")
    }
    for key in ("tokenizer.ggml.eos_token_id",):
        if key in reader.fields:
            meta[key] = reader.fields[key].contents()
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    if "token_embd.weight" not in shapes:
        raise ModelLoadError(f"{path}: GGUF has no token_embd.weight tensor")
    vocab = shapes["token_embd.weight"][-1]  # GGUF shapes are reversed: [hidden, vocab]
    raw_cfg = _hf_config(meta, vocab, tied="output.weight" not in shapes, source=str(path))
    cfg = ModelConfig.from_hf(raw_cfg, str(path))
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        hf_name = _hf_name(t.name)
        if hf_name is None:
            continue
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        value = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy
        if raw_cfg["_gguf_arch"] == "llama" and hf_name.endswith(
            ("q_proj.weight", "k_proj.weight")
        ):
            heads = cfg.num_heads if "q_proj" in hf_name else cfg.num_kv_heads
            value = _unpermute(value, heads)
        tensors[hf_name] = value
    return cfg, tensors


def _hf_config(meta: dict[str, Any], vocab: int, tied: bool, source: str) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch not in _ARCHS:
        raise ModelLoadError(
            f"{source}: unsupported GGUF architecture {arch!r}; supported: {', '.join(_ARCHS)}"
        )

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ModelLoadError(f"{source}: GGUF metadata {full!r} is missing")
        return meta[full]

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    cfg = {
        "_gguf_arch": arch,
        "architectures": [_ARCHS[arch]],
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(need("context_length")),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    return cfg


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (its converter reshapes each head's rows to
    [2, half] and swaps the axes; we reshape to [half, 2] and swap them back)."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
