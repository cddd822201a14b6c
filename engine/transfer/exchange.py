"""Both ends of a KV hand-off between a prefill and a decode worker, on the engine thread.

    prefill worker (KVSource)                    decode worker (KVSink)
    prompt done -> blocks HELD, lease granted
                   (in the step's wake, before the next step: `lease_held`)
    handle --------(router, gRPC)--------------> expect(handle, first token)
                                                  request admitted: blocks allocated,
                                                  own prefix hits reused
              <---- NIXL READ of missing blocks - start_read(remote[hits:], local[hits:])
                                                  polled each tick; other requests step
    notification (lease id) -> release blocks     ended before the lease - margin?
    or lease expiry -> release, counted             yes: use the KV  no: recompute, counted
                                                  not ended by then: cancel, recompute

A read's local blocks hold a reference of their own until the read has ended, so an abort
mid-read (or a read NIXL cannot cancel) never hands them to another request while they
may still be written.

Nothing here knows gRPC, Redis or NIXL: handles are plain dataclasses, converted at the
edge, and reads go through a `KVTransfer` (NIXL between workers, in-process in tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.output import RequestOutput
from engine.transfer.base import KVTransfer, PendingRead, TransferError
from engine.transfer.leases import LeaseTable

if TYPE_CHECKING:  # the router reads KVHandle from here: no engine (nor torch) at run time
    from engine.engine import Engine

log = logging.getLogger(__name__)

# A read that ends this close to the lease's end is not trusted: it covers the handle's
# trip from the router (the router already took its own time and the prefill call's off
# the lease) and the notification's trip back to the prefill worker.
EXPIRY_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class KVHandle:
    worker_id: str
    agent_name: str
    block_ids: tuple[int, ...]
    num_tokens: int
    lease_id: str
    lease_deadline: float  # time.monotonic() of the process holding this handle

    def check(self, prompt_len: int, block_size: int, first_token: int | None) -> None:
        """Raises ValueError unless this handle fits a prompt of `prompt_len` tokens in
        blocks of `block_size`, and comes with the first token its prefill sampled."""
        if first_token is None:
            raise ValueError("a KV handle comes with the first token the prefill worker sampled")
        if self.num_tokens != prompt_len:
            raise ValueError(
                f"the KV handle covers {self.num_tokens} tokens, the prompt has {prompt_len}"
            )
        blocks = -(-prompt_len // block_size)
        if len(self.block_ids) != blocks:
            raise ValueError(
                f"the KV handle has {len(self.block_ids)} blocks; a {prompt_len}-token prompt "
                f"needs {blocks} of {block_size} tokens"
            )


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
        # handles leased at the end of the step that held their prompts, until taken
        self._handles: dict[str, KVHandle] = {}

    def lease_held(self, outs: Sequence[RequestOutput]) -> int:
        """Engine thread, right after a step: lease the blocks of every prompt it held, so
        the handle is ready when the prompt's output reaches its caller. Asked for only
        then, the lease waited behind the whole next step (on a prefill worker, the next
        prompt's). Returns how many it leased."""
        held = [out.request_id for out in outs if out.held]
        for request_id in held:
            self._handles[request_id] = self.hold(request_id)
        return len(held)

    def take(self, request_id: str) -> KVHandle | None:
        """Any thread: the handle `lease_held` made for `request_id` (once)."""
        return self._handles.pop(request_id, None)

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
            lease.deadline,
        )

    def drop(self, request_id: str) -> bool:
        """The request was aborted: end its lease and free its blocks."""
        self._handles.pop(request_id, None)
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


@dataclass(slots=True)
class _Read:
    request_id: str
    handle: KVHandle
    first_token: int
    local_blocks: list[int]  # referenced by the read until it ends
    pending: PendingRead
    deadline: float  # monotonic: not ended by then, it is cancelled
    late: bool = False  # missed its deadline but could not be cancelled: recompute once ended


class KVSink:
    """Decode side: once a remote request is admitted, read the blocks it lacks, polled
    between steps; the request joins the batch when its read has ended."""

    def __init__(self, engine: Engine, transfer: KVTransfer, timeout_s: float = 10.0) -> None:
        self.engine = engine
        self.transfer = transfer
        self.timeout_s = timeout_s
        self._expected: dict[str, tuple[KVHandle, int]] = {}
        self._reads: dict[str, _Read] = {}
        self._orphans: list[_Read] = []
        self.reports: dict[str, ReadReport] = {}  # taken by the caller once the read is done
        self.num_reads = 0
        self.bytes_read = 0
        self.num_recomputed = 0

    def expect(self, request_id: str, handle: KVHandle, first_token: int) -> None:
        self._expected[request_id] = (handle, first_token)

    @property
    def reading(self) -> bool:
        """Reads are in flight: the loop should come back soon to poll them."""
        return bool(self._reads or self._orphans)

    @property
    def due(self) -> bool:
        """The loop should come back soon: reads are in flight, or a step has admitted a
        request whose read the next tick starts. (Waiting out an idle loop's pause there
        put ~20 ms between a prompt's first token and its second, at any load.)"""
        return self.reading or any(self.engine.awaiting_kv(r) is not None for r in self._expected)

    def forget(self, request_id: str) -> None:
        """The request is aborted: stop its read (its blocks wait for a read that cannot
        be stopped to end)."""
        self._expected.pop(request_id, None)
        self.reports.pop(request_id, None)
        read = self._reads.pop(request_id, None)
        if read is None:
            return
        if read.pending.cancel():
            self._unpin(read)
        else:
            self._orphans.append(read)

    def tick(self) -> list[RequestOutput]:
        """Start the reads of newly admitted requests, poll those in flight. Returns the
        outputs of requests that their first token already finished."""
        outs: list[RequestOutput] = []
        for rid in [r for r in self._expected if self.engine.awaiting_kv(r) is not None]:
            handle, first_token = self._expected.pop(rid)
            report = self._start(rid, handle, first_token)
            if report is not None:
                self._finish(rid, first_token, report, outs)
        self._orphans = [read for read in self._orphans if not self._ended(read)]
        for read in list(self._reads.values()):
            report = self._progress(read)
            if report is not None:
                del self._reads[read.request_id]
                self._finish(read.request_id, read.first_token, report, outs)
        return outs

    def _start(self, request_id: str, handle: KVHandle, first_token: int) -> ReadReport | None:
        """Post the read of what the request lacks; None when it is in flight."""
        req = self.engine.awaiting_kv(request_id)
        assert req is not None  # tick() starts only the admitted
        hits = req.num_computed_tokens // self.engine.block_size  # own prefix-cache blocks
        local, remote = list(req.block_ids[hits:]), list(handle.block_ids[hits:])
        trusted_until = handle.lease_deadline - EXPIRY_MARGIN_S
        if time.monotonic() >= trusted_until:
            return self._recompute("the lease was (nearly) over before the read started")
        try:
            pending = self.transfer.start_read(
                handle.agent_name, remote, local, notify=handle.lease_id.encode()
            )
        except TransferError as e:
            return self._recompute(f"the read did not start: {e}")
        self.engine.pool.acquire(local)
        deadline = min(trusted_until, time.monotonic() + self.timeout_s)
        self._reads[request_id] = _Read(request_id, handle, first_token, local, pending, deadline)
        return None

    def _finish(
        self, request_id: str, first_token: int, report: ReadReport, outs: list[RequestOutput]
    ) -> None:
        self.reports[request_id] = report
        ready = self.engine.remote_kv_ready(request_id, first_token, kv_valid=not report.recomputed)
        if ready is not None:
            outs.append(ready)

    def _progress(self, read: _Read) -> ReadReport | None:
        """None while the read is in flight; how it went once it has ended."""
        try:
            result = read.pending.poll()
        except TransferError as e:
            self._unpin(read)
            return self._recompute(f"the read failed: {e}")
        now = time.monotonic()
        if result is None:
            if now < read.deadline:
                return None
            if not read.pending.cancel():
                read.late = True  # the blocks may still be written: wait for the end
                return None
            self._unpin(read)
            return self._recompute("the read did not end in time; cancelled")
        self._unpin(read)
        if read.late or now >= read.handle.lease_deadline - EXPIRY_MARGIN_S:
            # The lease may have ended mid-read: its blocks freed, reused, overwritten.
            return self._recompute("the read ended after the lease may have expired")
        self.num_reads += 1
        self.bytes_read += result.bytes
        return ReadReport(result.bytes, result.seconds)

    def _ended(self, read: _Read) -> bool:
        """An orphan's read has ended: its blocks go back to the pool."""
        try:
            if read.pending.poll() is None and not read.pending.cancel():
                return False
        except TransferError:
            pass
        self._unpin(read)
        return True

    def _unpin(self, read: _Read) -> None:
        self.engine.pool.release(read.local_blocks)

    def _recompute(self, reason: str) -> ReadReport:
        log.warning("KV transfer not used, recomputing: %s", reason)
        self.num_recomputed += 1
        return ReadReport(recomputed=True)
