"""A separate process holding a registered KV cache: the far side of a NIXL read, for the
transfer benchmark and tests (a worker plays this part in a cluster).

Block i of the peer's cache is filled with `1000 * generation + i`, so a reader can check
exactly which block landed where, and a restarted peer (new generation) is told apart.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from engine.transfer.nixl_transfer import PeerKV


def _serve(name: str, shape: tuple[int, ...], generation: int, conn: Any) -> None:
    import torch

    from engine.transfer.nixl_transfer import NixlKVTransfer

    kv = torch.empty(shape)
    for i in range(shape[0]):
        kv[i] = 1000 * generation + i
    # As a worker does: no progress thread (it spins a core), the agent polled in a loop.
    transfer = NixlKVTransfer(name, kv, progress_thread=False)
    conn.send(transfer.describe())
    notes: list[bytes] = []
    while not conn.poll(0.001):  # until the reader is done
        notes += [m for msgs in transfer.notifications().values() for m in msgs]
    conn.recv()
    deadline = time.monotonic() + 2.0  # notifications arrive asynchronously
    while not notes and time.monotonic() < deadline:
        notes = [m for msgs in transfer.notifications().values() for m in msgs]
        time.sleep(0.01)
    conn.send(notes)
    transfer.close()


class KVPeerProcess:
    def __init__(
        self, name: str, shape: tuple[int, ...], generation: int = 1, start_timeout: float = 60
    ) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(name, shape, generation, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(start_timeout):
            self._proc.kill()
            raise RuntimeError(f"KV peer {name} did not start within {start_timeout}s")
        self.kv: PeerKV = self._conn.recv()

    def finish(self, timeout: float = 30) -> list[bytes]:
        """Stop the peer; return the notifications it received from readers."""
        self._conn.send("done")
        notes: list[bytes] = self._conn.recv() if self._conn.poll(timeout) else []
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
        return notes

    def kill(self) -> None:
        """The peer dies (SIGKILL) as a crashed worker does: no goodbye to its readers."""
        self._proc.kill()
        self._proc.join(10)
