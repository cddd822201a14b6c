"""A model directory for the mock backend: a config.json of a small Llama, no weights."""

from __future__ import annotations

import json
from pathlib import Path


def write_config_only(path: Path, vocab_size: int = 512, eos_token_id: int = 2) -> Path:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 1024,
        "eos_token_id": eos_token_id,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return path
