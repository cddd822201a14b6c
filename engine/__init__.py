"""Tandem's inference engine: one process, no networking.

Public entry points: `Engine`, `EngineConfig`, `SamplingParams`. `import engine` loads no
torch: the names are resolved on first use (PEP 562), so the router, the CLI and the
tokenizer can import engine submodules without the model's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import CacheConfig, EngineConfig, MockTiming, SchedulerConfig
    from engine.engine import Engine
    from engine.output import RequestOutput
    from engine.request import FinishReason
    from engine.sampling_params import SamplingParams

_EXPORTS = {
    "CacheConfig": "engine.config",
    "Engine": "engine.engine",
    "EngineConfig": "engine.config",
    "FinishReason": "engine.request",
    "MockTiming": "engine.config",
    "RequestOutput": "engine.output",
    "SamplingParams": "engine.sampling_params",
    "SchedulerConfig": "engine.config",
}

__all__ = [
    "CacheConfig",
    "Engine",
    "EngineConfig",
    "FinishReason",
    "MockTiming",
    "RequestOutput",
    "SamplingParams",
    "SchedulerConfig",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
