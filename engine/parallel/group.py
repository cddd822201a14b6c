"""The processes of one tensor-parallel worker and what passes between them.

Sums (after each layer's row-parallel GEMMs) go through a torch.distributed process group
of their own (gloo on CPUs, NCCL on GPUs) built from a TCP store on 127.0.0.1: no global
default group, so a process may hold several engines. What a step computes goes from
rank 0 to each follower over a pipe: a follower idle for hours waits on the pipe with no
timeout to run out, and its parent's death closes the pipe, which ends the follower.

A follower that exits leaves rank 0 unable to step: its next sum fails (gloo reads the
closed connection) or its next step cannot be sent; either raises RankLost, naming the
rank and how it ended. Rank 0 can also be asked (`lost`, any thread) between steps: the
worker's health check does, so an idle worker leaves the registry before a request finds
it broken.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

# A step's collectives all start within a step of each other; longer means a rank died.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=300)
# How long a failed sum waits for the follower's exit to show (its sockets close first)
EXIT_SHOWS_S = 1.0


class RankLost(RuntimeError):
    """A follower rank has exited: this worker's engine cannot step again."""


@dataclass
class TPGroup:
    rank: int
    size: int
    group: Any  # a ProcessGroupGloo / ProcessGroupNCCL
    # rank 0's pipes to its followers (rank 1, 2, ...); empty on a follower
    pipes: list[Connection] = field(default_factory=list)
    # set by rank 0 while peers may read the workers' KV (engine/parallel/kv.py): a
    # multiprocessing Event shared with the followers
    readers: Any = None
    # rank 0's follower processes (multiprocessing.Process), rank 1, 2, ...
    processes: list[Any] = field(default_factory=list)

    @classmethod
    def join(cls, rank: int, size: int, port: int, device: torch.device) -> TPGroup:
        """Block until all `size` ranks have joined through the store on `port`."""
        store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=COLLECTIVE_TIMEOUT)
        if device.type == "cuda":
            group: Any = dist.ProcessGroupNCCL(store, rank, size, dist.ProcessGroupNCCL.Options())
        else:
            group = dist.ProcessGroupGloo(store, rank, size, COLLECTIVE_TIMEOUT)
        return cls(rank, size, group)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the ranks, in place."""
        try:
            self.group.allreduce([t]).wait()
        except RuntimeError as e:
            self._raise_lost(e)
        return t

    def send(self, message: object) -> None:
        """Rank 0: the same message to every follower."""
        try:
            for pipe in self.pipes:
                pipe.send(message)
        except OSError as e:  # BrokenPipeError, ConnectionResetError: a follower's end
            self._raise_lost(e)

    def lost(self, wait_s: float = 0.0) -> str | None:
        """Rank 0, any thread: which follower has exited and how, or None; waits up to
        `wait_s` for an exit to show."""
        for rank, process in enumerate(self.processes, start=1):
            process.join(wait_s)
            if process.exitcode is not None:
                return f"tensor-parallel rank {rank} exited ({_how(process.exitcode)})"
        return None

    def _raise_lost(self, error: Exception) -> None:
        """Re-raises `error`, as RankLost when a follower has exited."""
        why = self.lost(EXIT_SHOWS_S)
        if why is None:
            raise error
        raise RankLost(why) from error


def _how(exitcode: int) -> str:
    return f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
