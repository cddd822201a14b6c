"""Block-quantized FP8 checkpoints (the format DeepSeek-V3 and MiniMax-M2 ship; config.json's
quantization_config says `"quant_method": "fp8"` and `"weight_block_size": [128, 128]`).

Each quantized `X.weight` is float8_e4m3fn beside `X.weight_scale_inv`, one float32 scale
a block of the weight (the last block of a row or column may be short); the weight is the
FP8 value times its block's scale. Weights left unquantized (the router's gate, norms,
embeddings, lm_head) have no scale. They are dequantized here, at load, in float32 (one
product, rounded once, as transformers dequantizes them), and then follow the model's
dtype like any other weight. So an FP8 checkpoint costs its dequantized size in memory:
a kernel reading FP8 blocks in the GEMM is for later. Activation scales (`input_scale`,
for static FP8 activations) have nothing to scale here: our activations stay unquantized.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.model.config import ModelLoadError

SCALE_SUFFIX = "_scale_inv"


def check_quantization(quant: dict[str, Any] | None, source: str) -> None:
    """Refuse, naming it, a quantization this loader would read as plain weights."""
    if quant is None:
        return
    method = quant.get("quant_method")
    if method != "fp8":
        raise ModelLoadError(
            f"{source}: quantization {method!r} is not supported; block-quantized fp8 "
            "checkpoints are (and GGUF files, for llama.cpp's formats)"
        )
    block = quant.get("weight_block_size")
    if block is not None and (len(block) != 2 or min(block) < 1):
        raise ModelLoadError(f"{source}: weight_block_size must be two sizes, got {block}")


def dequantize(
    quant: dict[str, Any] | None, tensors: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """`tensors` with each FP8 weight replaced by its float32 value and the scales gone."""
    check_quantization(quant, source)
    if quant is None:
        return tensors
    block = quant.get("weight_block_size")
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX) or name.endswith(".input_scale"):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        out[name] = t if scale is None else _dequantize_one(t, scale, block, f"{source}: {name}")
    return out


def _dequantize_one(
    weight: torch.Tensor, scale: torch.Tensor, block: list[int] | None, where: str
) -> torch.Tensor:
    rows, cols = weight.shape[-2:]
    if scale.numel() == 1:  # one scale for the whole tensor
        return weight.to(torch.float32) * scale.to(torch.float32).reshape(())
    if block is None:
        raise ModelLoadError(f"{where}: a scale per block, but no weight_block_size in config")
    br, bc = block
    grid = (-(-rows // br), -(-cols // bc))
    if tuple(scale.shape[-2:]) != grid:
        raise ModelLoadError(
            f"{where}: scales {tuple(scale.shape)} do not tile a {rows} x {cols} weight "
            f"in blocks of {br} x {bc}"
        )
    s = scale.to(torch.float32).repeat_interleave(br, -2).repeat_interleave(bc, -1)
    return weight.to(torch.float32) * s[..., :rows, :cols]
