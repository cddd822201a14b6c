"""Load a model from a Hugging Face directory or a GGUF file into our own model code."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.model.config import ModelConfig, ModelLoadError
from engine.model.gguf_loader import read_gguf, read_gguf_config
from engine.model.hf_loader import read_hf_config, read_hf_dir
from engine.model.llama import LlamaModel, rope_inv_freq
from engine.model.quant import QuantizedWeight
from engine.model.weights import load_into


def read_checkpoint(
    path: str | Path,
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """The config, the tensors in float32 under HF names, and for a GGUF file the raw
    blocks of its quantized weights (none for a Hugging Face directory)."""
    p = _locate(path)
    if p.is_dir():
        return (*read_hf_dir(p), {})
    return read_gguf(p)


def read_model_config(path: str | Path) -> ModelConfig:
    """The architecture alone, no weights read (all the mock backend needs)."""
    p = _locate(path)
    return read_hf_config(p) if p.is_dir() else read_gguf_config(p)


def _locate(path: str | Path) -> Path:
    """A Hugging Face directory or a .gguf file, or a ModelLoadError saying what it is not."""
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix == ".gguf":
        return p
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or directory")
    raise ModelLoadError(f"{p}: expected a Hugging Face model directory or a .gguf file")


def build_model(
    cfg: ModelConfig,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    source: str,
    blocks: dict[str, QuantizedWeight] | None = None,
) -> LlamaModel:
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model.to_empty(device="cpu")
    load_into(model, tensors, source, blocks)
    model = model.to(device=device, dtype=dtype).eval()
    # Built on the meta device above, so it carries no values yet.
    model.inv_freq = rope_inv_freq(cfg).to(device)
    return model


def pick_cpu_dtype(cfg: ModelConfig) -> torch.dtype:
    """Measure, don't guess: bfloat16 only where this CPU runs its GEMMs clearly faster
    (AMX / avx512_bf16 machines), else float32. Takes a few tens of milliseconds."""
    x_rows = 32
    args = {}
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(2 * cfg.intermediate_size, cfg.hidden_size).to(dtype)
        x = torch.randn(x_rows, cfg.hidden_size).to(dtype)
        torch.nn.functional.linear(x, w)  # warm-up (kernel selection, packing)
        args[dtype] = (x, w)
    # Interleaved rounds, best of each: another process busy on the same cores (a second
    # worker loading its model) slows single samples, not the fastest one.
    times = dict.fromkeys(args, float("inf"))
    for _ in range(7):
        for dtype, (x, w) in args.items():
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times[dtype] = min(times[dtype], time.perf_counter() - start)
    return torch.bfloat16 if times[torch.bfloat16] * 1.25 < times[torch.float32] else torch.float32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return pick_cpu_dtype(cfg)
    return getattr(torch, name)
