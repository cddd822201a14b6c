"""KV transfer for a tensor-parallel worker: each rank's cache holds its own KV heads, so
each rank registers it with a NIXL agent of its own, and each rank reads its heads from
the peer's ranks that hold them: between workers of the same size, rank i of the reader
from rank i of the peer; between sizes, from one rank or several, a head group from each
(engine/transfer/heads.py).

    rank 0 (TPKVTransfer, engine thread)             follower i (FollowerKV, its main loop)
    start_read(peer, remote, local, note)
      its own READs of its heads          ---Read--> its READs of its heads
      poll(): own reads + replies        <-Ended---  polled between steps
      all ranks ended -> note to the peer's rank 0 (send_notif), so the peer's lease
                         is released only once no rank still reads its blocks

Block ids are rank 0's on every rank (it schedules; followers run its steps on caches
sized like its own), and every head group is block-major, so each rank's read is still
one descriptor per run of adjacent blocks and head group.

Followers' agents must progress to answer reads of their memory (nixl_transfer.py says
why): a thread in each follower progresses every millisecond while rank 0's `ReadProgress`
runs (prompts held for readers: `expect_readers`, a cross-process event), and every 50 ms
otherwise, which answers a new reader's connection set-up. The follower's side is
follower_kv.py; what the two say to each other, kv_messages.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

from engine.parallel.group import TPGroup
from engine.parallel.kv_messages import (
    AddPeer,
    AgentReady,
    Cancel,
    PeerAdded,
    Read,
    ReadEnded,
    RemovePeer,
    StartAgent,
)
from engine.transfer.base import PeerKV, PendingRead, ReadResult, TransferError
from engine.transfer.heads import HeadSlice
from engine.transfer.nixl_transfer import NixlKVTransfer

REPLY_TIMEOUT_S = 60.0  # for a follower's answer to a peer change; longer means it died


def open_transfer(
    name: str, kv_cache: torch.Tensor, heads: HeadSlice, tp: TPGroup | None
) -> WorkerTransfer:
    """A worker's transfer: its agent over `kv_cache` (holding `heads`), and its
    followers' where it has some. No NIXL progress thread: it spins a core (the worker
    progresses it instead)."""
    own = NixlKVTransfer(name, kv_cache, progress_thread=False, heads=heads)
    return own if tp is None else TPKVTransfer(own, tp)


class TPKVTransfer:
    """Rank 0's transfer: its own agent, and its followers' through their pipes. Every
    method but `progress`, `notifications` and `expect_readers` runs on the engine thread
    (or before it starts), the only user of the pipes."""

    def __init__(self, own: NixlKVTransfer, group: TPGroup) -> None:
        self.own = own
        self.group = group
        for rank, pipe in enumerate(group.pipes, start=1):
            pipe.send(StartAgent(f"{own.name}-rank{rank}"))
        self._ranks = tuple(self._reply(pipe, AgentReady).peer for pipe in group.pipes)
        self._peers: set[str] = set()  # peers' rank 0 agent names, loaded on every rank
        self._ids = itertools.count()
        self._ended: dict[int, list[ReadEnded]] = {}  # followers' answers, by read

    @property
    def name(self) -> str:
        return self.own.name

    def describe(self) -> PeerKV:
        return dataclasses.replace(self.own.describe(), followers=self._ranks)

    def add_peer(self, peer: PeerKV) -> None:
        """Every rank loads the peer's ranks that hold its heads (each plans its own)."""
        self.own.add_peer(peer)
        self._peers.add(peer.agent_name)
        for pipe in self.group.pipes:
            pipe.send(AddPeer(peer))
        errors = [self._reply(pipe, PeerAdded).error for pipe in self.group.pipes]
        if any(errors):  # unloaded on every rank, those that had loaded it too
            self.remove_peer(peer.agent_name)
            raise ValueError(f"peer {peer.agent_name}: " + "; ".join(e for e in errors if e))

    def remove_peer(self, agent_name: str) -> None:
        self.own.remove_peer(agent_name)
        if agent_name in self._peers:
            self._peers.discard(agent_name)
            self.group.send(RemovePeer(agent_name))

    def start_read(
        self,
        peer_name: str,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        notify: bytes = b"",
    ) -> PendingRead:
        if peer_name not in self._peers:
            raise TransferError(f"unknown peer {peer_name!r}: add_peer() it first")
        own = self.own.start_read(peer_name, remote_blocks, local_blocks)  # no note yet
        read_id = next(self._ids)
        self._ended[read_id] = []
        self.group.send(Read(read_id, peer_name, list(remote_blocks), list(local_blocks)))
        return _TPRead(self, read_id, own, peer_name, notify)

    def notifications(self) -> dict[str, list[bytes]]:
        """Readers' notes come to rank 0's agent only (each reader's rank 0 sends them)."""
        return self.own.notifications()

    def progress(self) -> None:
        self.own.progress()

    def expect_readers(self, expected: bool) -> None:
        """Any thread: the followers progress their agents often while readers are
        expected, rarely otherwise."""
        if expected:
            self.group.readers.set()
        else:
            self.group.readers.clear()

    def close(self) -> None:
        self.own.close()  # the followers' agents end with their processes

    # ---- followers' answers ------------------------------------------------------------
    def collect(self) -> None:
        """Take the followers' read answers that have arrived (never waits)."""
        for pipe in self.group.pipes:
            while pipe.poll(0):
                self._keep(pipe.recv())

    def take_ended(self, read_id: int) -> list[ReadEnded] | None:
        """Every follower's answer for the read, once all have come (then forgotten)."""
        answers = self._ended[read_id]
        if len(answers) < len(self._ranks):
            return None
        return self._ended.pop(read_id)

    def cancel_followers(self, read_id: int) -> None:
        for pipe in self.group.pipes:
            pipe.send(Cancel(read_id))

    def _keep(self, message: object) -> None:
        if not isinstance(message, ReadEnded):
            raise RuntimeError(f"unexpected message from a follower rank: {message!r}")
        self._ended[message.read_id].append(message)

    def _reply(self, pipe: Connection, kind: type[Any]) -> Any:
        """The follower's answer of `kind`, keeping read answers that come before it."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while pipe.poll(max(0.0, deadline - time.monotonic())):
            message = pipe.recv()
            if isinstance(message, kind):
                return message
            self._keep(message)
        raise RuntimeError(f"a follower rank did not answer in {REPLY_TIMEOUT_S:g} s")


class _TPRead:
    """One read on every rank; ended when all have ended, failed when any failed."""

    def __init__(
        self, transfer: TPKVTransfer, read_id: int, own: PendingRead, peer: str, note: bytes
    ) -> None:
        self._transfer, self._read_id, self._own = transfer, read_id, own
        self._peer, self._note = peer, note
        self._own_ended = False
        self._own_result: ReadResult | None = None
        self._own_error = ""
        self._cancelling = False

    def poll(self) -> ReadResult | None:
        if not self._own_ended:
            try:
                self._own_result = self._own.poll()
                self._own_ended = self._own_result is not None
            except TransferError as e:
                self._own_ended, self._own_error = True, str(e)
        self._transfer.collect()
        if not self._own_ended:
            return None
        followers = self._transfer.take_ended(self._read_id)
        if followers is None:
            return None
        errors = [self._own_error] + [f.error for f in followers]
        if any(errors) or self._own_result is None:
            raise TransferError("; ".join(e for e in errors if e) or "cancelled")
        results = [self._own_result] + [f.result for f in followers if f.result is not None]
        if self._note:
            self._transfer.own.notify(self._peer, self._note)
        return ReadResult(
            sum(r.bytes for r in results),
            sum(r.descriptors for r in results),
            max(r.seconds for r in results),
        )

    def cancel(self) -> bool:
        """True only when no rank can still write the blocks: the followers answer a
        cancel later, so a read they hold is polled to its end (as KVSink does)."""
        if not self._cancelling:
            self._cancelling = True
            self._transfer.cancel_followers(self._read_id)
            if not self._own_ended and self._own.cancel():
                self._own_ended, self._own_error = True, "cancelled"
        self._transfer.collect()
        return self._own_ended and self._transfer.take_ended(self._read_id) is not None


WorkerTransfer = NixlKVTransfer | TPKVTransfer
