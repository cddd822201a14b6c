"""Engine configuration: frozen dataclasses, validated where they are built.

Lower layers receive explicit arguments (a block size, a token budget), never the whole
config. Environment variables are read in `engine.env` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

Role = Literal["prefill", "decode", "both"]
ROLES: tuple[str, ...] = ("prefill", "decode", "both")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
BACKENDS: tuple[str, ...] = ("model", "mock")  # mock: engine.mock, timings without a model


@dataclass(frozen=True, slots=True)
class CacheConfig:
    block_size: int = 16
    # Size of the KV pool: an explicit block count wins over a memory budget.
    num_blocks: int | None = None
    kv_cache_gb: float = 1.0
    enable_prefix_caching: bool = True
    # The cache laid out in this many head groups, each block-major on its own, so that a
    # peer with more tensor-parallel ranks reads or fills a group per run of blocks
    # (engine/transfer/heads.py): the ratio of the larger pool's size to this worker's.
    kv_head_groups: int = 1

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if self.kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be positive, got {self.kv_cache_gb}")
        if self.kv_head_groups < 1:
            raise ValueError(f"kv_head_groups must be positive, got {self.kv_head_groups}")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    # Tokens computed per step across all requests; a longer prompt is chunked.
    max_num_batched_tokens: int = 1024
    enable_chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}"
            )


@dataclass(frozen=True, slots=True)
class MockTiming:
    """The mock backend's cost of one forward pass (engine.mock explains the defaults):

    step = (step_ms + prefill_ms_per_token * prefill tokens
            + [if any sequence decodes] decode_ms + decode_ms_per_seq * decoding sequences
                                        + decode_ms_per_1k_context * their context / 1000
           ) / speed
    """

    step_ms: float = 2.0
    prefill_ms_per_token: float = 0.1
    decode_ms: float = 8.0
    decode_ms_per_seq: float = 0.05
    decode_ms_per_1k_context: float = 0.04
    speed: float = 1.0  # 2.0: every step takes half as long
    # Not a cost, a fault: > 0 makes that step's forward pass raise, so the engine loop
    # dies inside a live worker (what failure tests inject).
    die_at_step: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"mock timing {f.name} must be finite and >= 0, got {value}")
        if self.speed <= 0:
            raise ValueError(f"mock timing speed must be positive, got {self.speed}")

    @classmethod
    def parse(cls, spec: str) -> MockTiming:
        """`"decode_ms=12,speed=2"`: the defaults with those fields changed."""
        names = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if key not in names or not eq:
                raise ValueError(f"mock timing wants KEY=VALUE with KEY one of {names}: {item!r}")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"mock timing {key} must be a number, got {value!r}") from None
        return replace(cls(), **values)


DEFAULT_SEED = 0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str  # a Hugging Face directory or a .gguf file
    role: Role = "both"
    # model: run the model. mock: read only its config and tokenizer, and model each
    # forward pass's time (engine.mock); dtype is then float32 and device auto is cpu.
    backend: str = "model"
    dtype: str = "auto"  # auto: measured at start-up, see engine.model.dtype
    device: str = "auto"  # auto: cuda when available, else cpu
    attention_backend: str = "auto"  # auto: flashinfer where it fits (engine.attention), else torch
    num_threads: int | None = None  # torch intra-op threads on CPU; None = leave as is
    # vLLM's name: True runs every step eagerly; False captures the decode step for
    # `compile_sizes` batch sizes at start-up: CUDA graphs on a GPU (engine/cuda_graph.py),
    # inductor on a CPU (engine/compiled.py). None: captured on CUDA (about a second at
    # start-up), eager on a CPU, where the fused C++ ops leave a step few Python ops and
    # capturing costs tens of seconds per size (docs/benchmarks.md has the figures).
    enforce_eager: bool | None = None
    compile_sizes: tuple[int, ...] | None = None  # None: engine.compiled.DEFAULT_SIZES
    max_model_len: int | None = None  # None = the model's own context length
    # vLLM's name: processes one worker's model is sharded over (engine/parallel)
    tensor_parallel_size: int = 1
    # vLLM's name: with tensor parallelism, each rank holds whole experts, a share of them
    enable_expert_parallel: bool = False
    seed: int = DEFAULT_SEED  # for requests that sample without a seed of their own
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mock: MockTiming = field(default_factory=MockTiming)  # used by backend mock only

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {self.num_threads}")
        if self.compile_sizes is not None and (
            not self.compile_sizes or min(self.compile_sizes) < 1
        ):
            raise ValueError(f"compile_sizes must be positive sizes, got {self.compile_sizes}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size must be positive, got {self.tensor_parallel_size}"
            )
        if self.cache.kv_head_groups > 1 and self.backend == "mock":
            raise ValueError("kv_head_groups > 1 lays out a model's KV heads: not with the mock")
        if self.enable_expert_parallel and self.tensor_parallel_size == 1:
            raise ValueError("enable_expert_parallel shares experts over tensor_parallel_size > 1")
        if self.tensor_parallel_size > 1 and (
            self.backend == "mock" or self.enforce_eager is False
        ):
            # not built yet: a compiled step over ranks (the mock has no model to shard)
            raise ValueError(
                "tensor_parallel_size > 1 runs the model eagerly: not with backend mock or "
                "a compiled decode step yet"
            )

    def eager_on(self, device_type: str) -> bool:
        """Whether every step runs eagerly on this kind of device (`enforce_eager`)."""
        if self.enforce_eager is None:
            return device_type != "cuda" or self.tensor_parallel_size > 1
        return self.enforce_eager
