r"""The ramp every cluster is given: phases of open-loop arrivals, the same for each.

    rate  ^            plateau
          |          ___________   prefill-heavy   decode-heavy
          |   up   /            \_______________ _______________
          |      /                (long prompts,  (short prompts,   down
          | ___/                   few tokens)     long answers)  \____
          +-------------------------------------------------------------> t

A phase's rate goes linearly from `rate_start` to `rate_end` requests/s; arrivals are a
Poisson process of that rate (drawn once from a seed), so every cluster sees the very same
requests at the very same offsets. Prompts are token ids, each request's own (no prefix
cache hits: every prompt token is prefill work).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

VOCAB = (1000, 40000)  # token ids drawn from here: inside SmolLM2's 49,152


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    duration_s: float
    rate_start: float  # requests/s at the phase's start
    rate_end: float  # and at its end (linear in between)
    prompt_len: int
    output_len: int

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or min(self.rate_start, self.rate_end) < 0:
            raise ValueError(f"phase {self.name}: duration > 0 and rates >= 0 needed")
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"phase {self.name}: prompts and answers need a token or more")

    def rate(self, offset_s: float) -> float:
        f = min(max(offset_s / self.duration_s, 0.0), 1.0)
        return self.rate_start + (self.rate_end - self.rate_start) * f


# Sized for the mock timing in clusters.py: one decode worker holds ~19 streams at the
# 60 ms ITL target, one prefill worker computes 2,000 prompt tokens/s. The plateau wants
# about 1 prefill + 2 decode workers, prefill-heavy 2 + 1, decode-heavy 0-1 + 3.
RAMP = (
    Phase("up", 30, 0.5, 5.0, 256, 64),
    Phase("plateau", 25, 5.0, 5.0, 256, 64),
    Phase("prefill-heavy", 25, 4.0, 4.0, 768, 8),
    Phase("decode-heavy", 25, 2.5, 2.5, 64, 256),
    Phase("down", 25, 2.0, 0.0, 256, 64),
)


@dataclass(frozen=True, slots=True)
class Arrival:
    at_s: float  # offset from the ramp's start
    phase: str
    prompt: tuple[int, ...]
    output_len: int


def scaled(phases: tuple[Phase, ...], time_scale: float) -> tuple[Phase, ...]:
    """The same ramp with every phase `time_scale` times as long (a quick run: < 1)."""
    return tuple(
        Phase(
            p.name, p.duration_s * time_scale, p.rate_start, p.rate_end, p.prompt_len, p.output_len
        )
        for p in phases
    )


def phase_starts(phases: tuple[Phase, ...]) -> list[tuple[str, float]]:
    """(name, offset) of each phase's start, in order."""
    out, t = [], 0.0
    for p in phases:
        out.append((p.name, t))
        t += p.duration_s
    return out


def length_s(phases: tuple[Phase, ...]) -> float:
    return sum(p.duration_s for p in phases)


def schedule(phases: tuple[Phase, ...], seed: int = 0, limit: int = 10_000) -> list[Arrival]:
    """Every arrival of the ramp, in time order; at most `limit` of them."""
    rng = random.Random(seed)
    out: list[Arrival] = []
    start = 0.0
    for p in phases:
        out += _phase_arrivals(p, start, rng, limit - len(out))
        start += p.duration_s
    return out


def _phase_arrivals(p: Phase, start: float, rng: random.Random, limit: int) -> list[Arrival]:
    """A Poisson process of rate p.rate(t), by thinning: candidates at the phase's peak
    rate, each kept with probability rate(t) / peak."""
    peak = max(p.rate_start, p.rate_end)
    out: list[Arrival] = []
    t = 0.0
    while peak > 0 and len(out) < limit:
        t += rng.expovariate(peak)
        if t >= p.duration_s:
            break
        if rng.random() * peak < p.rate(t):
            prompt = tuple(rng.randrange(*VOCAB) for _ in range(p.prompt_len))
            out.append(Arrival(start + t, p.name, prompt, p.output_len))
    return out


def offered(phases: tuple[Phase, ...]) -> dict[str, float]:
    """Expected requests per phase (the rate's integral): what a table can show beside
    what was drawn."""
    return {p.name: math.fsum((p.rate_start, p.rate_end)) / 2 * p.duration_s for p in phases}
