"""Both ends of a KV hand-off between a prefill and a decode worker, on the engine thread.

    prefill worker (KVSource)                    decode worker (KVSink)
    prompt done -> blocks HELD, lease granted
    handle --------(router, gRPC)--------------> expect(handle, first token)
                                                  request admitted: blocks allocated,
                                                  own prefix hits reused
              <---- NIXL READ of missing blocks - read(remote[hits:], local[hits:])
    notification (lease id) -> release blocks     completed before expiry - margin?
    or lease expiry -> release, counted             yes: use the KV  no: recompute, counted

Nothing here knows gRPC, Redis or NIXL: handles are plain dataclasses, converted at the
edge, and reads go through a `KVTransfer` (NIXL between workers, in-process in tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.output import RequestOutput
from engine.transfer.base import KVTransfer, TransferError
from engine.transfer.leases import LeaseTable, now_ms

if TYPE_CHECKING:  # the router reads KVHandle from here: no engine (nor torch) at run time
    from engine.engine import Engine

log = logging.getLogger(__name__)

# A read that completes this close to the lease's end is not trusted: it covers clock skew
# between hosts and the time the notification takes to reach the prefill worker.
EXPIRY_MARGIN_MS = 1000


@dataclass(frozen=True, slots=True)
class KVHandle:
    worker_id: str
    agent_name: str
    block_ids: tuple[int, ...]
    num_tokens: int
    lease_id: str
    lease_expiry_unix_ms: int


@dataclass(slots=True)
class ReadReport:
    bytes_read: int = 0
    seconds: float = 0.0
    recomputed: bool = False


class KVSource:
    """Prefill side: prompts' blocks held under leases until the reader says it is done."""

    def __init__(
        self, engine: Engine, transfer: KVTransfer, worker_id: str, leases: LeaseTable
    ) -> None:
        self.engine = engine
        self.transfer = transfer
        self.worker_id = worker_id
        self.leases = leases

    def hold(self, request_id: str) -> KVHandle:
        """A prompt just finished here and its blocks are held: lease them."""
        req = self.engine.held_request(request_id)
        if req is None:
            raise KeyError(f"{request_id} is not held")
        lease = self.leases.grant(request_id)
        return KVHandle(
            self.worker_id,
            self.transfer.name,
            tuple(req.block_ids),
            req.num_prompt_tokens,
            lease.lease_id,
            lease.expiry_unix_ms,
        )

    def drop(self, request_id: str) -> bool:
        """The request was aborted: end its lease and free its blocks."""
        self.leases.release_request(request_id)
        return self.engine.abort(request_id)

    def tick(self) -> None:
        for messages in self.transfer.notifications().values():
            for msg in messages:
                lease = self.leases.release(msg.decode(errors="replace"))
                if lease is not None:
                    self.engine.release_held(lease.request_id)
        for lease in self.leases.pop_expired():
            log.warning("lease on %s expired before its reader finished", lease.request_id)
            self.engine.release_held(lease.request_id)


class KVSink:
    """Decode side: once a remote request is admitted, read the blocks it lacks."""

    def __init__(self, engine: Engine, transfer: KVTransfer, timeout_s: float = 10.0) -> None:
        self.engine = engine
        self.transfer = transfer
        self.timeout_s = timeout_s
        self._pending: dict[str, tuple[KVHandle, int]] = {}
        self.reports: dict[str, ReadReport] = {}  # taken by the caller once the read is done
        self.num_reads = 0
        self.bytes_read = 0
        self.num_recomputed = 0

    def expect(self, request_id: str, handle: KVHandle, first_token: int) -> None:
        self._pending[request_id] = (handle, first_token)

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)
        self.reports.pop(request_id, None)

    def tick(self) -> list[RequestOutput]:
        """Serve every pending request the scheduler has admitted. Returns outputs of
        requests that the first token already finished."""
        outs = []
        for rid in [r for r in self._pending if self.engine.awaiting_kv(r) is not None]:
            handle, first = self._pending.pop(rid)
            report = self._pull(rid, handle)
            self.reports[rid] = report
            out = self.engine.remote_kv_ready(rid, first, kv_valid=not report.recomputed)
            if out is not None:
                outs.append(out)
        return outs

    def _pull(self, request_id: str, handle: KVHandle) -> ReadReport:
        req = self.engine.awaiting_kv(request_id)
        assert req is not None  # tick() read only the admitted
        hits = req.num_computed_tokens // self.engine.block_size  # own prefix-cache blocks
        local, remote = req.block_ids[hits:], list(handle.block_ids[hits:])
        deadline = handle.lease_expiry_unix_ms - EXPIRY_MARGIN_MS
        if now_ms() >= deadline:
            return self._recompute("the lease expired before the read started")
        try:
            res = self.transfer.read(
                handle.agent_name,
                remote,
                local,
                timeout_s=min(self.timeout_s, (deadline - now_ms()) / 1000),
                notify=handle.lease_id.encode(),
            )
        except TransferError as e:
            return self._recompute(str(e))
        if now_ms() >= deadline:  # the blocks may have been freed and reused mid-read
            return self._recompute("the read finished after the lease may have expired")
        self.num_reads += 1
        self.bytes_read += res.bytes
        return ReadReport(res.bytes, res.seconds)

    def _recompute(self, reason: str) -> ReadReport:
        log.warning("KV transfer not used, recomputing: %s", reason)
        self.num_recomputed += 1
        return ReadReport(recomputed=True)
