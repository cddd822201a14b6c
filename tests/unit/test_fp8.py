"""Block-quantized FP8 weights (engine/model/fp8.py): each block scaled by its own scale,
short blocks at the edges, one scale for a whole tensor; what cannot be read is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.model import fp8
from engine.model.config import ModelLoadError
from engine.model.hf_loader import read_hf_config

FP8 = {"quant_method": "fp8", "weight_block_size": [4, 8]}


def test_each_block_takes_its_own_scale_short_edge_blocks_included() -> None:
    # 6 x 10 in blocks of 4 x 8: a 2 x 2 grid whose last row and column are short
    values = torch.arange(60, dtype=torch.float32).reshape(6, 10) % 7 - 3
    scales = torch.tensor([[1.0, 2.0], [0.5, 0.25]])
    tensors = {
        "w.weight": values.to(torch.float8_e4m3fn),
        "w.weight_scale_inv": scales,
        "norm.weight": torch.ones(10),
        "w.input_scale": torch.tensor(1.0),
    }
    out = fp8.dequantize(FP8, tensors, "test")
    assert set(out) == {"w.weight", "norm.weight"}  # the scales are spent
    want = values.clone()
    want[:4, :8] *= 1.0
    want[:4, 8:] *= 2.0
    want[4:, :8] *= 0.5
    want[4:, 8:] *= 0.25
    assert out["w.weight"].dtype == torch.float32
    torch.testing.assert_close(out["w.weight"], want, rtol=0, atol=0)
    assert out["norm.weight"] is tensors["norm.weight"]


def test_one_scale_for_a_whole_tensor() -> None:
    w = torch.full((3, 5), 2.0).to(torch.float8_e4m3fn)
    out = fp8.dequantize({"quant_method": "fp8"}, {"w": w, "w_scale_inv": torch.tensor([0.5])}, "t")
    torch.testing.assert_close(out["w"], torch.ones(3, 5))


def test_a_scale_grid_that_does_not_tile_the_weight_is_refused() -> None:
    tensors = {"w.weight": torch.zeros(6, 10).to(torch.float8_e4m3fn)}
    tensors["w.weight_scale_inv"] = torch.ones(3, 2)  # 6 rows in blocks of 4: 2, not 3
    with pytest.raises(ModelLoadError, match=r"w.weight: scales \(3, 2\) do not tile"):
        fp8.dequantize(FP8, tensors, "test")


def test_no_quantization_leaves_the_tensors_as_they_are() -> None:
    tensors = {"w.weight": torch.ones(2, 2)}
    assert fp8.dequantize(None, tensors, "test") is tensors


@pytest.mark.parametrize(
    ("quant", "match"),
    [
        ({"quant_method": "gptq", "bits": 4}, "quantization 'gptq' is not supported"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, "must be two sizes"),
    ],
)
def test_a_checkpoint_we_would_misread_is_refused_by_name(
    tmp_path: Path, quant: dict[str, object], match: str
) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "quantization_config": quant,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=match):
        read_hf_config(tmp_path)
