"""A follower rank's KV memory (engine/parallel/kv.py has the whole picture): its own NIXL
agent over its cache (its share of the KV heads), the reads rank 0 asks of it, polled
between steps, and a thread that progresses its agent so peers' reads of it complete."""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from engine.parallel.kv_messages import (
    AddPeer,
    AgentReady,
    Cancel,
    FollowerMessage,
    PeerAdded,
    Read,
    ReadEnded,
    RemovePeer,
    StartAgent,
)
from engine.transfer.base import PendingRead, TransferError
from engine.transfer.heads import HeadSlice
from engine.transfer.nixl_transfer import NixlKVTransfer

log = logging.getLogger(__name__)

BUSY_EVERY_S = 0.001  # progress while rank 0 expects readers
IDLE_EVERY_S = 0.05  # and otherwise: a reader's connection set-up waits at most this


class FollowerKV:
    """A follower rank's side: its agent (from `StartAgent` on), its reads, its answers."""

    def __init__(
        self, kv_cache: torch.Tensor, heads: HeadSlice, pipe: Connection, readers: Any
    ) -> None:
        """`heads`: those `kv_cache` holds; `readers`: rank 0's cross-process event
        (`TPKVTransfer.expect_readers`)."""
        self._kv_cache, self._heads = kv_cache, heads
        self._pipe, self._readers = pipe, readers
        self._transfer: NixlKVTransfer | None = None
        self._reads: dict[int, PendingRead] = {}

    @property
    def reading(self) -> bool:
        return bool(self._reads)

    def handle(self, message: FollowerMessage) -> None:
        if isinstance(message, StartAgent):
            self._start(message.name)
            return
        transfer = self._transfer
        if transfer is None:
            raise RuntimeError(f"{message!r} before the follower's agent started")
        if isinstance(message, AddPeer):
            try:
                transfer.add_peer(message.peer)
                self._pipe.send(PeerAdded(""))
            except Exception as e:  # noqa: BLE001 (rank 0 raises it with the others')
                self._pipe.send(PeerAdded(f"rank of {message.peer.agent_name}: {e}"))
        elif isinstance(message, RemovePeer):
            transfer.remove_peer(message.agent_name)
        elif isinstance(message, Read):
            try:
                self._reads[message.read_id] = transfer.start_read(
                    message.peer_name, message.remote, message.local
                )
            except TransferError as e:
                self._pipe.send(ReadEnded(message.read_id, None, str(e)))
        elif isinstance(message, Cancel):
            read = self._reads.get(message.read_id)
            if read is not None and read.cancel():
                del self._reads[message.read_id]
                self._pipe.send(ReadEnded(message.read_id, None, "cancelled"))

    def poll(self) -> None:
        """Answer rank 0 for every read that has ended."""
        for read_id, read in list(self._reads.items()):
            try:
                result = read.poll()
            except TransferError as e:
                self._pipe.send(ReadEnded(read_id, None, str(e)))
                del self._reads[read_id]
                continue
            if result is not None:
                self._pipe.send(ReadEnded(read_id, result))
                del self._reads[read_id]

    def _start(self, name: str) -> None:
        self._transfer = NixlKVTransfer(
            name, self._kv_cache, progress_thread=False, heads=self._heads
        )
        self._pipe.send(AgentReady(self._transfer.describe()))
        threading.Thread(
            target=self._progress, args=(self._transfer,), name="nixl-progress", daemon=True
        ).start()

    def _progress(self, transfer: NixlKVTransfer) -> None:
        while True:
            if self._readers.wait(IDLE_EVERY_S):
                time.sleep(BUSY_EVERY_S)
            try:
                transfer.progress()
            except Exception:
                log.exception("NIXL progress failed on a follower rank")
                return
