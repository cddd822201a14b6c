"""Read a Hugging Face checkpoint directory: config.json and *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.model.config import ModelConfig, ModelLoadError


def read_hf_config(path: Path) -> ModelConfig:
    """config.json alone (the mock backend needs no weights)."""
    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{cfg_file}: not found; a model directory needs config.json"
        ) from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({e})") from None
    return ModelConfig.from_hf(raw, str(cfg_file))


def read_hf_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    cfg = read_hf_config(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weight files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({e})") from None
    return cfg, tensors
