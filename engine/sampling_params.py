"""What a caller may ask of one generation. Validated once, here."""

from __future__ import annotations

from dataclasses import dataclass, replace

_UINT32, _UINT64 = 2**32, 2**64  # what the wire (proto/worker.proto) carries
# Stop strings are searched after every token, and each one's prefixes are held to catch a
# match split across tokens (memory and time grow with the square of a string's length):
# bounded so that no request can buy seconds per token. OpenAI takes 4 strings; code
# completion clients send a dozen or more.
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 256
# A temperature above 0 and below this is refused: the sampler divides the logits by it, a
# float32 overflows to inf, and the draw then fails inside the engine's step (one request
# would stop a worker). The router sends such a temperature as 0, greedy, as vLLM treats
# those below 1e-5. A power of two, so a value at or above it stays so as the wire's float32.
MIN_TEMPERATURE = 2.0**-16


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
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, "
                f"got {self.temperature}"
            )
        if not 0 <= self.top_k < _UINT32:
            raise ValueError(f"top_k must be in [0, 2**32) (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}")
        if any(not 0 < len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_CHARS} characters long")

    def remaining(self, generated: int) -> SamplingParams:
        """What is left to ask once `generated` tokens are out: a request resumed on another
        worker generates only the rest. (A seeded sample then draws afresh: only greedy
        output continues exactly as it would have.)"""
        if not 0 <= generated < self.max_tokens:
            raise ValueError(
                f"max_tokens must exceed the tokens already generated ({generated}), "
                f"got {self.max_tokens}"
            )
        return replace(
            self,
            max_tokens=self.max_tokens - generated,
            min_tokens=max(0, self.min_tokens - generated),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
