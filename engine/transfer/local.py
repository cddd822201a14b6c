"""KV transfer between caches in one process: the NIXL call shape without NIXL.

Ends find each other through a shared `LocalFabric` (NIXL's metadata exchange, here a
dict). A read copies whole blocks from the peer's cache into ours and then posts its note
to the peer, as a NIXL READ does on completion; for tests of the hand-off, and of what
happens when a read fails (`fail_reads`), takes a while (`read_polls`) or hangs
(`hang_reads`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.transfer.base import ReadResult, TransferError
from engine.transfer.runs import coalesce


@dataclass(slots=True)
class LocalFabric:
    """The ends that can read each other, by name."""

    ends: dict[str, LocalKVTransfer] = field(default_factory=dict)


class LocalKVTransfer:
    def __init__(self, name: str, kv_cache: torch.Tensor, fabric: LocalFabric) -> None:
        if name in fabric.ends:
            raise ValueError(f"{name!r} is already on this fabric")
        self._name = name
        self.kv_cache = kv_cache  # block-major: [num_blocks, ...]
        self.fabric = fabric
        self.fail_reads = False  # tests: every read raises TransferError
        self.read_polls = 0  # tests: polls a read stays in flight for
        self.hang_reads = False  # tests: while set, reads neither end nor cancel
        self._inbox: defaultdict[str, list[bytes]] = defaultdict(list)
        fabric.ends[name] = self

    @property
    def name(self) -> str:
        return self._name

    def start_read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        notify: bytes = b"",
    ) -> LocalRead:
        """Copies at once; the read then stays in flight for `read_polls` polls (tests of
        a read that takes a while), and while `hang_reads` is set."""
        peer = self.fabric.ends.get(peer_name)
        if peer is None:
            raise TransferError(f"unknown peer {peer_name!r}")
        if len(remote_blocks) != len(local_blocks):
            raise TransferError("remote and local block lists differ in length")
        _check_range(remote_blocks, peer.kv_cache.shape[0], peer_name)
        _check_range(local_blocks, self.kv_cache.shape[0], "local")
        if self.fail_reads:
            raise TransferError("local transfer: read failed (fail_reads)")
        start = time.perf_counter()
        self.kv_cache[list(local_blocks)] = peer.kv_cache[list(remote_blocks)]
        if notify:
            peer._inbox[self._name].append(notify)
        block_bytes = self.kv_cache[0].numel() * self.kv_cache.element_size()
        runs = coalesce(local_blocks, remote_blocks)
        result = ReadResult(len(local_blocks) * block_bytes, len(runs), time.perf_counter() - start)
        return LocalRead(result, self, self.read_polls)

    def notifications(self) -> dict[str, list[bytes]]:
        notes, self._inbox = dict(self._inbox), defaultdict(list)
        return notes

    def close(self) -> None:
        self.fabric.ends.pop(self._name, None)


class LocalRead:
    def __init__(self, result: ReadResult, end: LocalKVTransfer, polls: int) -> None:
        self.result, self.end, self.polls_left = result, end, polls

    def poll(self) -> ReadResult | None:
        if self.end.hang_reads:
            return None
        if self.polls_left > 0:
            self.polls_left -= 1
            return None
        return self.result

    def cancel(self) -> bool:
        return not self.end.hang_reads


def _check_range(blocks: Sequence[int], num_blocks: int, whose: str) -> None:
    if any(not 0 <= b < num_blocks for b in blocks):
        raise TransferError(f"{whose} block id out of range ({num_blocks} blocks)")
