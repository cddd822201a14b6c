"""What a caller may ask of one generation. Validated once, here."""

from __future__ import annotations

from dataclasses import dataclass

_UINT32, _UINT64 = 2**32, 2**64  # what the wire (proto/worker.proto) carries


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 1.0
    seed: int | None = None  # same seed, same output
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: bool = False  # logprob of each chosen token

    def __post_init__(self) -> None:
        # Normalise so callers may pass lists.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.seed is not None:
            # torch.Generator.manual_seed reads a negative seed modulo 2**64 (-1 is
            # 2**64 - 1): so do we, and OpenAI's signed seeds fit the wire's uint64
            object.__setattr__(self, "seed", self.seed % _UINT64)
        if not 1 <= self.max_tokens < _UINT32:
            raise ValueError(f"max_tokens must be in [1, 2**32), got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 <= self.top_k < _UINT32:
            raise ValueError(f"top_k must be in [0, 2**32) (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
