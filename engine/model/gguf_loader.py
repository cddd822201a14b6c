"""Read a GGUF file: dequantize its tensors and rebuild a Hugging Face-style config.

llama.cpp's converter permutes the rows of Llama's q/k projections so its interleaved RoPE
matches; we use rotate-half RoPE like Hugging Face, so those rows are permuted back.

`read_gguf_config` reads the config alone (for the mock backend) with a header scan of
its own: gguf's reader parses every metadata array into numpy views, seconds for the
~100k tokenizer strings of a small model, which a config does not need.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model.config import ModelConfig, ModelLoadError
from engine.model.quant import BLOCK_BYTES, QuantizedWeight

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


def read_gguf(
    path: Path,
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """The config, every tensor dequantized to float32 (HF names), and the raw blocks of
    the 2-D weights stored in a block format our CPU kernel reads (engine/model/quant.py)."""
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
    blocks: dict[str, QuantizedWeight] = {}
    for t in reader.tensors:
        hf_name = _hf_name(t.name)
        if hf_name is None:
            continue
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        value = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy
        raw = None
        if int(t.tensor_type) in BLOCK_BYTES and value.dim() == 2:
            raw = torch.from_numpy(np.array(t.data, dtype=np.uint8)).view(value.shape[0], -1)
        if raw_cfg["_gguf_arch"] == "llama" and hf_name.endswith(
            ("q_proj.weight", "k_proj.weight")
        ):
            heads = cfg.num_heads if "q_proj" in hf_name else cfg.num_kv_heads
            value = _unpermute(value, heads)
            raw = None if raw is None else _unpermute(raw, heads).contiguous()
        tensors[hf_name] = value
        if raw is not None:
            blocks[hf_name] = QuantizedWeight(raw, int(t.tensor_type))
    return cfg, tensors, blocks


def read_gguf_config(path: Path) -> ModelConfig:
    """The config of a GGUF file without reading its tensors or tokenizer arrays."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            meta, shapes = _scan_header(_Cursor(buf))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file not found") from None
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e})") from None
    if "token_embd.weight" not in shapes:
        raise ModelLoadError(f"{path}: GGUF has no token_embd.weight tensor")
    vocab = shapes["token_embd.weight"][-1]
    raw_cfg = _hf_config(meta, vocab, tied="output.weight" not in shapes, source=str(path))
    return ModelConfig.from_hf(raw_cfg, str(path))


# GGUF value types (gguf.GGUFValueType) with fixed sizes, as struct formats (little-endian).
_SCALAR_FORMATS = dict(enumerate("BbHhIifB")) | {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        self.pos += n
        return self.buf[self.pos - n : self.pos].decode()

    def value(self, vtype: int, keep: bool) -> Any:
        """The next value of type `vtype`; with `keep` False, skip it and return None."""
        if vtype == _STRING:
            return self.string() if keep else self._skip_string()
        if vtype == _ARRAY:
            item, n = self.scalar("I"), self.scalar("Q")
            if not keep and item in _SCALAR_FORMATS:
                self.pos += n * struct.calcsize(_SCALAR_FORMATS[item])
                return None
            items = [self.value(item, keep) for _ in range(n)]
            return items if keep else None
        if vtype not in _SCALAR_FORMATS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        value = self.scalar(_SCALAR_FORMATS[vtype])
        return bool(value) if vtype == 7 else value

    def _skip_string(self) -> None:
        self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]


def _scan_header(c: _Cursor) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Metadata (tokenizer arrays skipped) and tensor shapes, as read_gguf sees them."""
    if c.buf[:4] != b"GGUF":
        raise ValueError("bad magic")
    c.pos = 4
    version = c.scalar("I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_fields = c.scalar("Q"), c.scalar("Q")
    meta: dict[str, Any] = {}
    for _ in range(n_fields):
        key = c.string()
        keep = not key.startswith("tokenizer.ggml.") or key == "tokenizer.ggml.eos_token_id"
        value = c.value(c.scalar("I"), keep)
        if keep:
            meta[key] = value
    shapes: dict[str, list[int]] = {}
    for _ in range(n_tensors):
        name = c.string()
        shapes[name] = [c.scalar("Q") for _ in range(c.scalar("I"))]
        c.pos += 4 + 8  # tensor type, data offset
    return meta, shapes


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
