"""vLLM's `--generation-config`: a model's own sampling defaults (the `generation_config.json`
its authors ship) for the fields a request leaves out.

    auto    the model's folder (for a GGUF file, the folder that holds it), if it has one
    vllm    none: OpenAI's defaults (temperature 1, top_p 1, ...)
    FOLDER  a folder holding generation_config.json (it must)

The fields read are vLLM's: temperature, top_p, top_k, min_p, repetition_penalty, and
max_new_tokens as the default max_tokens. A value a request sends always wins."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from engine.sampling_params import SamplingParams
from services.router.protocol import SamplingBody

FILE = "generation_config.json"
# the file's name -> the request's (and SamplingParams') name
FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}

B = TypeVar("B", bound=SamplingBody)


def load_defaults(spec: str, model: str) -> dict[str, Any]:
    """The defaults `spec` names for `model` (a folder or a model file). Raises ValueError
    for a folder without the file, or values no request could send."""
    if spec == "vllm":
        return {}
    folder = Path(model) if spec == "auto" else Path(spec)
    if spec == "auto" and not folder.is_dir():
        folder = folder.parent
    path = folder / FILE
    if not path.is_file():
        if spec == "auto":
            return {}
        raise ValueError(f"no {FILE} in {folder}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    defaults = {ours: raw[theirs] for theirs, ours in FIELDS.items() if raw.get(theirs) is not None}
    try:  # the same checks a request's values get
        SamplingParams(**{k: v for k, v in defaults.items() if k != "max_tokens"})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return defaults


def with_defaults(body: B, defaults: Mapping[str, Any]) -> B:
    """`body` with the defaults for the fields it left out."""
    unset = {k: v for k, v in defaults.items() if k not in body.model_fields_set}
    if "max_tokens" in unset and body.requested_max_tokens()[0] is not None:
        del unset["max_tokens"]  # chat's max_completion_tokens was sent
    return body.model_copy(update=unset) if unset else body
