"""What a soak runs: its length, kill interval, load and cluster size."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SoakConfig:
    duration_s: float = 180.0
    kill_every_s: float = 30.0
    senders: int = 48
    prefill_workers: int = 2
    decode_workers: int = 2
    max_num_seqs: int = 8
    output_tokens: int = 32

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.kill_every_s <= 0 or self.senders < 1:
            raise ValueError("duration, kill interval and senders must be positive")
        if self.prefill_workers < 1 or self.decode_workers < 2:
            raise ValueError("a soak needs a prefill worker and two decode workers")
