"""What a load test runs: frozen dataclasses, validated where they are built.

A scenario holds one or more workloads; a workload is a dataset driven by a load. A workload
with several load points (a sweep) runs them one after another; the scenario's other
workloads run beside each point at their own single load (see `loadtest.scenario`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

INF = math.inf
DATASETS: tuple[str, ...] = ("random", "shared-prefix", "multi-turn", "mooncake", "sharegpt")
ENDPOINTS: tuple[str, ...] = ("completions", "chat")
DEFAULT_NUM_PROMPTS = 100
DEFAULT_OUTPUT_LEN = 128


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    name: str = "random"
    path: str | None = None  # mooncake and sharegpt read a file
    # None: 100, or every entry of a trace. multi-turn: conversations; shared-prefix: unused
    # (it sends num_prefixes x suffixes_per_prefix requests).
    num_prompts: int | None = None
    input_len: int = 256  # shared-prefix: the unique suffix after the prefix
    output_len: int | None = None  # None: 128; sharegpt: the recorded answer's length
    range_ratio: float = 0.0  # lengths drawn uniformly from [len*(1-r), len*(1+r)]
    num_prefixes: int = 4
    prefix_len: int = 512
    suffixes_per_prefix: int = 8
    turns: int = 3
    time_scale: float = 1.0  # mooncake: 0.5 replays the trace twice as fast

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.name!r}")
        if self.name in ("mooncake", "sharegpt") and not self.path:
            raise ValueError(f"the {self.name} dataset needs a file (dataset_path)")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        for name in ("input_len", "num_prefixes", "prefix_len", "suffixes_per_prefix", "turns"):
            _positive(name, getattr(self, name))
        _positive("time_scale", self.time_scale)
        if self.num_prompts is not None:
            _positive("num_prompts", self.num_prompts)
        if self.output_len is not None:
            _positive("output_len", self.output_len)


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """How requests are released: at `request_rate` (inf: all at once) with gamma-distributed
    gaps of shape `burstiness` (1 is Poisson), never more than `concurrency` in flight (None:
    no cap). A trace replay (mooncake) takes its times from the trace and ignores the rate."""

    concurrency: int | None = None
    request_rate: float = INF
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency is not None:
            _positive("concurrency", self.concurrency)
        _positive("request_rate", self.request_rate)
        _positive("burstiness", self.burstiness)


@dataclass(frozen=True, slots=True)
class Goodput:
    """Service-level objectives in milliseconds; a request is good when it succeeded and
    meets every one that is set."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            _positive(f"goodput {name}", value)

    def as_dict(self) -> dict[str, float]:
        slos = {"ttft": self.ttft_ms, "tpot": self.tpot_ms, "e2el": self.e2el_ms}
        return {k: v for k, v in slos.items() if v is not None}


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    name: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    loads: tuple[LoadPoint, ...] = (LoadPoint(),)  # more than one: a sweep
    endpoint: str = "completions"
    warmup: int = 0  # requests (multi-turn: conversations) sent first and left out
    ignore_eos: bool = True  # with min_tokens = max_tokens: every answer has output_len tokens
    temperature: float = 0.0
    # /v1/completions gets token ids unless this is set (see loadtest.datasets)
    text_prompts: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request
    goodput: Goodput = field(default_factory=Goodput)
    background: bool = False  # stopped once every foreground workload has finished
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a workload needs a name")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if not self.loads:
            raise ValueError(f"workload {self.name!r} has no load point")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    name: str
    workloads: tuple[WorkloadConfig, ...]
    description: str = ""
    max_duration: float = 600.0  # seconds per step (one load point of the sweep)
    request_timeout: float = 300.0  # seconds per request, from sending to the last byte
    tokenizer: str | None = None  # None: the caller must pass one

    def __post_init__(self) -> None:
        if not self.workloads:
            raise ValueError(f"scenario {self.name!r} has no workload")
        names = [w.name for w in self.workloads]
        if len(set(names)) != len(names):
            raise ValueError(f"workload names must differ, got {names}")
        if all(w.background for w in self.workloads):
            raise ValueError("at least one workload must not be background")
        if sum(len(w.loads) > 1 for w in self.workloads) > 1:
            raise ValueError("only one workload of a scenario may sweep several load points")
        _positive("max_duration", self.max_duration)
        _positive("request_timeout", self.request_timeout)

    @property
    def num_steps(self) -> int:
        return max(len(w.loads) for w in self.workloads)


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test."""

    url: str  # base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
