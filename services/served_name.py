"""The name a model is served under when none is given: what the API's `model` field and
every metric's `model_name` label say, on the router and on the workers alike."""

from __future__ import annotations

from pathlib import Path


def served_model_name(model: str) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct; a directory -> its name."""
    p = Path(model)
    return p.name.split(".")[0] if p.suffix == ".gguf" else p.name
