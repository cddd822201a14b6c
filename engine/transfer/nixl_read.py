"""One read of a peer's KV blocks over NIXL (engine/transfer/nixl_transfer.py posts it):
a transfer from each peer rank it reads, polled and ended together, and the reader's note
to the peer sent once all have ended where no transfer carries it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from engine.transfer.base import ReadResult, TransferError


@dataclass(frozen=True, slots=True)
class Descriptors:
    """One transfer's NIXL descriptor lists, ours and the peer rank's."""

    local: Any
    remote: Any
    nbytes: int
    count: int


class NixlRead:
    """The transfers of one read, one from each peer rank; their handles are released once
    all have ended or the read is cancelled."""

    def __init__(self, agent: Any, lock: threading.Lock, peer: str, note: bytes) -> None:
        self._agent, self._lock = agent, lock
        self._peer, self._note = peer, note  # a note to send once all have ended
        self._handles: list[Any] = []
        self._states: list[str] = []
        self._bytes = self._descriptors = 0
        self._start = time.perf_counter()

    def post(self, agent_name: str, descs: Descriptors, notify: bytes) -> None:
        """Start the transfer of `descs` from the peer rank `agent_name`."""
        try:  # NIXL raises its own errors (a peer gone: nixlRemoteDisconnectError)
            with self._lock:
                handle = self._agent.initialize_xfer(
                    "READ", descs.local, descs.remote, agent_name, notify
                )
        except Exception as e:
            raise TransferError(f"NIXL read of {agent_name} not started: {e!r}") from e
        self._handles.append(handle)
        self._states.append("PROC")
        self._bytes += descs.nbytes
        self._descriptors += descs.count
        try:
            with self._lock:
                self._states[-1] = self._agent.transfer(handle)
        except Exception as e:
            raise TransferError(f"NIXL read of {agent_name} failed: {e!r}") from e

    def poll(self) -> ReadResult | None:
        for i, handle in enumerate(self._handles):
            if handle is not None and self._states[i] == "PROC":
                try:
                    with self._lock:
                        self._states[i] = self._agent.check_xfer_state(handle)
                except Exception as e:  # as "ERR": the peer is gone, the read did not finish
                    self._states[i] = f"ERR ({e!r})"
        failed = [s for s in self._states if s not in ("PROC", "DONE")]
        if not failed and "PROC" in self._states:
            return None
        if failed:  # the others are stopped first: none may write our blocks after this
            if not self.cancel():
                return None  # one could not be stopped yet: polled again, to its end
            raise TransferError(f"NIXL read failed: state {failed[0]}")
        self.cancel()  # ended: this only frees the handles
        if self._note:
            with self._lock:
                self._agent.send_notif(self._peer, self._note)
            self._note = b""
        return ReadResult(self._bytes, self._descriptors, time.perf_counter() - self._start)

    def cancel(self) -> bool:
        """Release every handle: NIXL aborts a transfer in flight, and raises when it
        cannot (False then: that one may still write our blocks). An ended transfer's
        handle that will not release holds nothing back."""
        stopped = True
        for i, handle in enumerate(self._handles):
            if handle is None:
                continue
            try:
                with self._lock:
                    self._agent.release_xfer_handle(handle)
            except Exception:
                if self._states[i] == "PROC":
                    stopped = False
                    continue
            self._handles[i] = None
            if self._states[i] == "PROC":
                self._states[i] = "cancelled"
        return stopped
