"""Tandem's inference engine: one process, no networking.

Public entry points: `Engine`, `EngineConfig`, `SamplingParams`.
"""

from engine.config import CacheConfig, EngineConfig, MockTiming, SchedulerConfig
from engine.engine import Engine, RequestOutput
from engine.sampling_params import SamplingParams

__all__ = [
    "CacheConfig",
    "Engine",
    "EngineConfig",
    "MockTiming",
    "RequestOutput",
    "SamplingParams",
    "SchedulerConfig",
]
