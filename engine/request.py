"""One request's state as the scheduler sees it: integers, no tensors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.hashing import SEED, chain_hashes
from engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    # Decode role: blocks are allocated and the prompt's KV is being written by a peer.
    WAITING_FOR_REMOTE_KV = "waiting_for_remote_kv"
    RUNNING = "running"
    # Prefill role: finished computing, blocks still held until the peer has read them.
    HELD = "held"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    remote_prefill: bool = False  # KV for the prompt comes from another worker
    status: Status = Status.WAITING
    token_ids: list[int] = field(default_factory=list)  # prompt + output, grows each step
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of full blocks of token_ids
    num_committed_blocks: int = 0  # leading blocks already registered in the prefix cache
    finish_reason: str | None = None
    num_preemptions: int = 0
    logprobs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def update_hashes(self, block_size: int) -> list[int]:
        """Extend `block_hashes` to cover every full block of `token_ids`."""
        parent = self.block_hashes[-1] if self.block_hashes else SEED
        self.block_hashes += chain_hashes(
            self.token_ids, block_size, parent=parent, start_block=len(self.block_hashes)
        )
        return self.block_hashes
