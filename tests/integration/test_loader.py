"""Loading checkpoints: what loads, and the one clear error for what does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.model.config import ModelLoadError
from engine.model.loader import read_checkpoint


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_reads_hf_directory(tiny_checkpoints: dict[str, Path]) -> None:
    cfg, tensors, _ = read_checkpoint(tiny_checkpoints["qwen3"])
    assert cfg.architecture == "Qwen3ForCausalLM"
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.qk_norm) == (24, 2, True)
    assert "model.layers.0.self_attn.q_norm.weight" in tensors


def test_unsupported_architecture_names_the_file(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelLoadError, match=r"config\.json: unsupported architecture .*GPT2LMHeadModel"
    ):
        read_checkpoint(d)


def test_broken_config_json(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        read_checkpoint(d)


def test_missing_weights(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        read_checkpoint(d)


def test_missing_tensor_is_named(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from engine.model.loader import build_model

    d = _copy(tiny_checkpoints["llama"], tmp_path / "m")
    (weights,) = d.glob("*.safetensors")
    tensors = load_file(str(weights))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(weights))
    cfg, loaded, _ = read_checkpoint(d)
    with pytest.raises(
        ModelLoadError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.* is missing"
    ):
        build_model(cfg, loaded, torch.float32, torch.device("cpu"), str(d))


def test_corrupt_gguf_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="broken.gguf: not a readable GGUF file"):
        read_checkpoint(bad)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        read_checkpoint(tmp_path / "nope.bin")
    with pytest.raises(ModelLoadError, match="file not found"):
        read_checkpoint(tmp_path / "nope.gguf")


def test_start_up_reports_the_workers_memory(
    tiny_checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from engine import CacheConfig, Engine, EngineConfig

    # the tiny Llama's KV: 2 (K, V) x 3 layers x 2 heads x 16 dims x 4 bytes = 768 B a token
    blocks = (1 << 28) // (16 * 768)  # a quarter GiB of blocks of 16 tokens
    cfg = EngineConfig(
        model=str(tiny_checkpoints["llama"]),
        dtype="float32",
        cache=CacheConfig(block_size=16, num_blocks=blocks),
    )
    with caplog.at_level("INFO", logger="engine.backends"):
        engine = Engine(cfg, load_tokenizer_files=False)
    weights = sum(p.numel() * 4 for p in engine.runner.model.parameters()) / (1 << 30)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
    assert f"weights {weights:.2f} GiB (float32), KV cache 0.25 GiB ({blocks} blocks)" in line
    assert "GiB peak RSS" in line
