"""Fake WorkerClients for the per-request flow's unit tests (services/router/dispatch.py):
each records what it is asked and answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from engine.sampling_params import SamplingParams
from engine.transfer.exchange import KVHandle
from services.pb.events_pb2 import WorkerRecord
from services.router.backend import GenerateRequest, TokenDelta
from services.router.cluster_view import ClusterView
from services.router.cold_start import ColdStart
from services.router.dispatch import Dispatcher
from services.router.dispatch_config import DispatchConfig
from services.router.metrics import RouterMetrics
from services.router.routing import Policy
from services.router.worker_client import WorkerError
from services.router.workers import WorkerRef, WorkerSet
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply

HANDLE = KVHandle("prefill-0", "agent-p0", (1, 2), 20, "lease", 2.0**41)
PROMPT = list(range(20))  # over local_prefill_tokens below: disaggregated


class FakeWorker:
    """Stands in for a WorkerClient: records calls, answers from a script."""

    def __init__(self, prefill: PrefillReply | Exception | None = None, chunks=(), fail=None):  # type: ignore[no-untyped-def]
        self.prefill_reply = prefill
        self.chunks: list[DecodeReply] = list(chunks)
        self.fail: WorkerError | None = fail  # raised by decode after the chunks
        self.prefills: list[PrefillCall] = []
        self.decodes: list[DecodeCall] = []
        self.aborted: list[str] = []
        self.stream_closed = False

    async def prefill(self, call: PrefillCall, timeout_s: float) -> PrefillReply:
        self.prefills.append(call)
        if isinstance(self.prefill_reply, Exception):
            raise self.prefill_reply
        assert self.prefill_reply is not None
        return self.prefill_reply

    async def decode(self, call: DecodeCall) -> AsyncGenerator[DecodeReply, None]:
        self.decodes.append(call)
        try:
            for chunk in self.chunks:
                yield chunk
            if self.fail is not None:
                raise self.fail
        finally:
            self.stream_closed = True

    async def abort(self, request_id: str, timeout_s: float = 5.0) -> bool:
        self.aborted.append(request_id)
        return True

    async def close(self, grace_s: float | None = None) -> None:
        pass


def dispatcher(
    balance: bool = True,
    attempts: int = 3,
    hold_s: float = 0.0,
    max_held: int = 4,
    publish_held: Callable[[str, int], None] = lambda router_id, count: None,
    **fakes: FakeWorker,
) -> tuple[Dispatcher, RouterMetrics]:
    workers = WorkerSet(registry=None)  # type: ignore[arg-type]  # never refreshed
    for worker_id, fake in fakes.items():
        record = WorkerRecord(
            worker_id=worker_id, role=worker_id.split("-")[0], block_size=4, kv_heads=2
        )
        workers.workers[worker_id] = WorkerRef(record, fake)  # type: ignore[arg-type]
    metrics = RouterMetrics("test-model")
    config = DispatchConfig(
        routing="round-robin",
        local_prefill_tokens=8,
        balance_prefill=balance,
        decode_attempts=attempts,
    )
    view = ClusterView(workers, metrics)
    cold_start = ColdStart(hold_s, max_held, metrics, publish_held)
    return Dispatcher(view, config, metrics, Policy("round-robin", None), cold_start), metrics


def run(d: Dispatcher, prompt: list[int] = PROMPT, take: int | None = None) -> list[TokenDelta]:
    async def go() -> list[TokenDelta]:
        request = GenerateRequest("r1", prompt, SamplingParams(max_tokens=4))
        out = []
        stream = d.generate(request)
        async for delta in stream:
            out.append(delta)
            if take is not None and len(out) == take:
                break
        await stream.aclose()  # what the HTTP edge does when a client goes away
        await d.close()
        return out

    return asyncio.run(go())


def chunk(tokens: list[int], done: bool = False, **kw: Any) -> DecodeReply:
    return DecodeReply(tokens, [], done, "length" if done else None, 12, **kw)
