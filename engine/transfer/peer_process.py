"""A separate process holding a registered KV cache: the far side of a NIXL read, for the
transfer benchmark and tests (a worker plays this part in a cluster).

Block i of the peer's cache is filled with `1000 * generation + i` (of head group g:
`1000 * generation + 100 * g + i`), so a reader can check exactly which block landed
where, and a restarted peer (new generation) is told apart.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from engine.transfer.heads import HeadSlice
from engine.transfer.nixl_transfer import PeerKV


def _serve(
    name: str,
    shape: tuple[int, ...],
    heads: HeadSlice | None,
    generation: int,
    step_s: float,
    conn: Any,
) -> None:
    import torch

    from engine.transfer.nixl_transfer import NixlKVTransfer
    from engine.transfer.progress import ReadProgress

    groups = heads.groups if heads else 1
    kv = torch.empty(shape if groups == 1 else (groups, *shape))
    for g, group in enumerate(kv.view(groups, *shape)):
        for i in range(shape[0]):
            group[i] = 1000 * generation + 100 * g + i
    # As a worker does: no progress thread (it spins a core), the agent polled in a loop,
    # between steps of `step_s` (a busy worker's), with ours answering reads meanwhile.
    transfer = NixlKVTransfer(name, kv, progress_thread=False, heads=heads)
    progress = ReadProgress(transfer, lambda: True) if step_s > 0 else None
    if progress is not None:
        progress.wake()
    conn.send(transfer.describe())
    notes: list[bytes] = []
    while not conn.poll(0.001):  # until the reader is done
        time.sleep(step_s)  # the engine thread inside a step
        notes += [m for msgs in transfer.notifications().values() for m in msgs]
    conn.recv()
    if progress is not None:
        progress.stop()
    deadline = time.monotonic() + 2.0  # notifications arrive asynchronously
    while not notes and time.monotonic() < deadline:
        notes = [m for msgs in transfer.notifications().values() for m in msgs]
        time.sleep(0.01)
    conn.send(notes)
    transfer.close()


class KVPeerProcess:
    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        generation: int = 1,
        start_timeout: float = 60,
        step_s: float = 0.0,
        heads: HeadSlice | None = None,
    ) -> None:
        """`shape`: one head group's cache; `heads`: what it holds, in how many groups
        (None: one group). `step_s`: the peer polls its agent only every `step_s` seconds,
        as a worker inside long steps does, and a `ReadProgress` thread answers reads
        meanwhile."""
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(name, shape, heads, generation, step_s, child), daemon=True
        )
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
