"""The mixed workload at the scale of 16 workers: short chats streaming beside long
prompts, as a loadtest scenario (a dict), and the steady demand it puts on a cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

# What SmolLM2's chat template adds to a one-message chat (the tokenizer's count); the
# chats are sent as messages, so the server prefills this many more tokens than input_len.
CHAT_TEMPLATE_TOKENS = 30


@dataclass(frozen=True, slots=True)
class Mixed:
    """Chats are the foreground (closed loop at `chat_concurrency`); long prompts arrive
    as a Poisson process in the background and stop when the chats are done. Rates and
    SLOs are for the mock's documented timing (speed 1); `dilated` slows them down."""

    chat_concurrency: int = 32
    chat_input: int = 64
    chat_output: int = 128
    chats: int = 416  # 13 rounds of 32
    long_rate: float = 9.0  # requests/s
    long_input: int = 4096
    long_output: int = 16
    range_ratio: float = 0.1
    # Chats' SLOs for goodput: TTFT, and TPOT at 2.5x the modelled ~10 ms decode step.
    chat_ttft_ms: float = 1000.0
    chat_tpot_ms: float = 25.0
    max_duration_s: float = 120.0  # the load phase's bound; chats left then are cancelled

    def __post_init__(self) -> None:
        for name in ("chat_concurrency", "chat_input", "chat_output", "chats", "long_input"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not (self.long_rate > 0 and self.max_duration_s > 0):
            raise ValueError("long_rate and max_duration_s must be positive")

    @property
    def chat_prompt_tokens(self) -> int:
        return self.chat_input + CHAT_TEMPLATE_TOKENS

    @property
    def long_prompts(self) -> int:
        """Enough to keep arriving for the whole bounded run (background: the rest are
        never sent)."""
        return math.ceil(self.long_rate * self.max_duration_s) + 1

    def scenario(self) -> dict[str, Any]:
        """loadtest's scenario dict (the keys of loadtest/scenario_file.py)."""
        return {
            "name": "mixed-interference-16",
            "max_duration": self.max_duration_s,
            "request_timeout": 60.0,
            "warmup": 1,
            "dataset": "random",
            "range_ratio": self.range_ratio,
            "workload": [
                {
                    "name": FOREGROUND,
                    "endpoint": "chat",
                    "input_len": self.chat_input,
                    "output_len": self.chat_output,
                    "num_prompts": self.chats,
                    "concurrency": self.chat_concurrency,
                    "goodput": {"ttft": self.chat_ttft_ms, "tpot": self.chat_tpot_ms},
                },
                {
                    "name": "long-prompts",
                    "background": True,
                    "endpoint": "completions",
                    "input_len": self.long_input,
                    "output_len": self.long_output,
                    "num_prompts": self.long_prompts,
                    "request_rate": self.long_rate,
                    "arrival": "poisson",
                },
            ],
        }


FOREGROUND = "short-chats"


def dilated(w: Mixed, speed: float) -> Mixed:
    """The workload for a mock `speed` times as fast: every step lasts 1/speed as long,
    so arrivals come `speed` times as often and the SLOs are 1/speed as long. The same
    queues, batches and chunk interference, on a wall clock the host can keep up with."""
    return replace(
        w,
        long_rate=w.long_rate * speed,
        chat_ttft_ms=w.chat_ttft_ms / speed,
        chat_tpot_ms=w.chat_tpot_ms / speed,
    )


def scaled(w: Mixed, load: float) -> Mixed:
    """Every rate and concurrency times `load` (at least one chat)."""
    return replace(
        w,
        chat_concurrency=max(1, round(w.chat_concurrency * load)),
        long_rate=w.long_rate * load,
    )
