"""The benchmark's two workloads, built once as token ids so every routing mode (and the
oracle) sees exactly the same prompts.

    chat      system prompts ~1,000 tokens (Zipf-popular) -> users' conversations:
              turn 1 = system + user_1
              turn k+1 = turn k + reply_k + user_(k+1)   (extends turn k token for token)
              the replies are synthetic ids fixed per conversation, not the generated
              tokens: a prefill worker never sees the generated tokens anyway, and fixed
              replies keep every mode's prompts identical. A turn is sent `think_s`
              (exponential) after the previous answer ended; conversations start as a
              Poisson process so that requests arrive at about `rate` per second.
    mooncake  a synthetic Mooncake trace (loadtest.datasets.mooncake_synth), replayed by
              its timestamps through loadtest's mooncake dataset (512 ids per hash id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.arrivals import arrival_offsets
from loadtest.datasets.base import PromptMaker, TokenizerLike


@dataclass(frozen=True, slots=True)
class Turn:
    prompt: tuple[int, ...]
    output_len: int
    think_s: float = 0.0  # pause after the previous turn's answer (the first turn: none)


@dataclass(frozen=True, slots=True)
class Conversation:
    at: float  # seconds after the start
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    conversations: tuple[Conversation, ...]
    params: dict[str, Any]

    @property
    def num_requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations)

    def prompts_in_order(self) -> list[tuple[int, ...]]:
        """Every prompt, by its nominal send time (start + thinks; latencies left out)."""
        timed = []
        for c in self.conversations:
            t = c.at
            for turn in c.turns:
                t += turn.think_s
                timed.append((t, turn.prompt))
        timed.sort(key=lambda x: x[0])  # stable: a conversation's turns keep their order
        return [p for _, p in timed]

    def summary(self) -> dict[str, Any]:
        lens = [len(t.prompt) for c in self.conversations for t in c.turns]
        return {
            "conversations": len(self.conversations),
            "requests": len(lens),
            "prompt_tokens_mean": float(np.mean(lens)) if lens else 0.0,
            "prompt_tokens_max": max(lens, default=0),
            **self.params,
        }


@dataclass(frozen=True, slots=True)
class ChatConfig:
    rate: float = 4.0  # requests per second, on average
    conversations: int = 200
    system_prompts: int = 8
    system_len: tuple[int, int] = (900, 1100)  # inclusive ranges, uniform
    zipf: float = 1.0  # system prompt popularity ~ 1 / rank**zipf
    turns: tuple[int, int] = (2, 6)
    user_len: tuple[int, int] = (50, 250)
    reply_len: tuple[int, int] = (100, 300)
    output_len: int = 16
    think_s: float = 3.0  # mean of the exponential pause between turns
    seed: int = 0


def chat_workload(cfg: ChatConfig, tokenizer: TokenizerLike) -> Workload:
    rng = np.random.default_rng(cfg.seed)
    maker = PromptMaker(tokenizer, as_text=False)
    systems = [maker.ids(rng, _uniform(rng, cfg.system_len)) for _ in range(cfg.system_prompts)]
    weights = 1.0 / np.arange(1, cfg.system_prompts + 1) ** cfg.zipf
    weights /= weights.sum()
    mean_turns = (cfg.turns[0] + cfg.turns[1]) / 2
    starts = arrival_offsets(cfg.conversations, cfg.rate / mean_turns, 1.0, cfg.seed)
    conversations = []
    for at in starts:
        prompt = list(systems[int(rng.choice(cfg.system_prompts, p=weights))])
        turns = []
        for k in range(_uniform(rng, cfg.turns)):
            if k:
                prompt += maker.ids(rng, _uniform(rng, cfg.reply_len))
            prompt += maker.ids(rng, _uniform(rng, cfg.user_len))
            think = float(rng.exponential(cfg.think_s)) if k else 0.0
            turns.append(Turn(tuple(prompt), cfg.output_len, think))
        conversations.append(Conversation(at, tuple(turns)))
    return Workload("chat", tuple(conversations), {"kind": "chat", **asdict(cfg)})


def mooncake_workload(
    trace: Path, tokenizer: TokenizerLike, salt: int, params: dict[str, Any]
) -> Workload:
    """The trace's requests as one-turn conversations at the trace's times."""
    from loadtest.config import DatasetConfig
    from loadtest.datasets import build_sessions

    sessions = build_sessions(DatasetConfig("mooncake", str(trace)), tokenizer, False, salt)
    conversations = []
    for s in sessions:
        (turn,) = s.turns
        assert isinstance(turn.prompt, tuple)  # as_text=False: token ids
        conversations.append(Conversation(s.at or 0.0, (Turn(turn.prompt, turn.output_len),)))
    return Workload("mooncake", tuple(conversations), {"kind": "mooncake", **params})


def _uniform(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))
