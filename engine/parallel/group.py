"""The processes of one tensor-parallel worker and what passes between them.

Sums (after each layer's row-parallel GEMMs) go through a torch.distributed process group
of their own (gloo on CPUs, NCCL on GPUs) built from a TCP store on 127.0.0.1: no global
default group, so a process may hold several engines. What a step computes goes from
rank 0 to each follower over a pipe: a follower idle for hours waits on the pipe with no
timeout to run out, and its parent's death closes the pipe, which ends the follower.
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
        self.group.allreduce([t]).wait()
        return t

    def send(self, message: object) -> None:
        """Rank 0: the same message to every follower."""
        for pipe in self.pipes:
            pipe.send(message)
