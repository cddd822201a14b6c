"""Read a Hugging Face checkpoint directory: config.json and *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.model import fp8
from engine.model.config import ModelConfig, ModelLoadError


def _read_config(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """config.json as read, and the model it describes."""
    cfg_file = path / "config.json"
    try:
        raw: dict[str, Any] = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{cfg_file}: not found; a model directory needs config.json"
        ) from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({e})") from None
    fp8.check_quantization(raw.get("quantization_config"), str(cfg_file))
    return raw, ModelConfig.from_hf(raw, str(cfg_file))


def read_hf_config(path: Path) -> ModelConfig:
    """config.json alone (the mock backend needs no weights)."""
    return _read_config(path)[1]


def read_hf_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and every tensor, FP8 weights dequantized (engine/model/fp8.py)."""
    raw, cfg = _read_config(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weight files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({e})") from None
    return cfg, fp8.dequantize(raw.get("quantization_config"), tensors, str(path))
