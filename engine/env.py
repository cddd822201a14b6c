"""The one place that reads environment variables. Nothing here runs at import time."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def model_cache_dir() -> Path:
    """Where `tandem models pull` keeps models: $TANDEM_MODEL_CACHE, else ~/.cache/tandem/models."""
    override = os.environ.get("TANDEM_MODEL_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "tandem" / "models"


DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Where `tandem models pull` puts the default model's GGUF."""
    return model_cache_dir() / DEFAULT_MODEL_NAME / DEFAULT_MODEL_FILE
