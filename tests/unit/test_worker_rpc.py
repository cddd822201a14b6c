"""Both edges of the worker rpc over a real gRPC server on 127.0.0.1, with a scripted worker
behind the servicer: the router's WorkerClient -> services.wire -> protobuf bytes ->
WorkerService -> the calls, and back, errors included. (Real workers: tests/integration.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from engine.output import RequestOutput, StepTotals
from engine.request import FinishReason
from engine.sampling_params import SamplingParams
from engine.transfer.exchange import ReadReport
from services.pb import worker_pb2_grpc
from services.router.worker_client import WorkerClient, WorkerError
from services.wire import DecodeCall, DecodeReply, HealthReply, KVDump, PrefillCall, PrefillReply
from services.worker.core import RoleError
from services.worker.engine_thread import EngineDead
from services.worker.results import DecodeUpdate
from services.worker.servicer import WorkerService
from services.worker.stats import WorkerStats
from tests.helpers.handles import assert_same_but_lease, handle

T = TypeVar("T")
HANDLE = handle("p-0", "p-0-agent", (3, 4), 20, "lease-9")
PARAMS = SamplingParams(max_tokens=3)


class ScriptedCalls:
    """What services/worker/handlers.py's WorkerCalls offers, answered from a script."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    async def prefill(self, call: PrefillCall) -> PrefillReply:
        self.seen.append(call)
        if call.request_id == "decode-only":
            raise RoleError("a decode worker does not prefill")
        return PrefillReply(7, -0.5, 16, None, HANDLE)

    async def decode(self, call: DecodeCall) -> AsyncIterator[DecodeUpdate]:
        self.seen.append(call)
        if call.generated_token_ids and call.first_token is not None:
            raise ValueError("a resumed request carries no KV handle and no first token")
        return self._stream(call.request_id)

    async def _stream(self, request_id: str) -> AsyncIterator[DecodeUpdate]:
        out = RequestOutput(request_id, [5], False, None, 20, 16, 1)
        out.prompt_logprobs, out.prompt_top_logprobs = [-1.5, -0.25], [((9, -0.5),), ((4, -0.25),)]
        yield DecodeUpdate(out, ReadReport(bytes_read=64, seconds=0.25))
        if request_id == "dies":
            raise EngineDead("the engine loop has stopped")
        yield DecodeUpdate(
            RequestOutput(request_id, [6], True, FinishReason.LENGTH, 20, 16, 2), None
        )

    async def abort(self, request_id: str) -> bool:
        return request_id == "known"

    def health(self) -> HealthReply:
        return HealthReply(True, "w-0", "both")

    async def stats(self) -> WorkerStats:
        return WorkerStats(1, 2, 64, 40, 8, 24, 4, 1, 0, 10, 512, 2, 1, False, "", StepTotals())

    async def dump_kv(self) -> KVDump:
        return KVDump("w-0", 123, 9, [2**64 - 1], 16)


def _with_worker(test: Callable[[WorkerClient, ScriptedCalls], Awaitable[T]]) -> T:
    async def go() -> T:
        calls = ScriptedCalls()
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(calls), server)  # type: ignore[arg-type]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = WorkerClient(f"127.0.0.1:{port}")
        try:
            return await test(client, calls)
        finally:
            await client.close()
            await server.stop(None)

    return asyncio.run(go())


def test_prefill_and_decode_carry_python_objects_both_ways() -> None:
    async def test(client: WorkerClient, calls: ScriptedCalls) -> None:
        call = PrefillCall("r1", [1, 2, 3], PARAMS)
        got = await client.prefill(call, timeout_s=5)
        assert_same_but_lease(got, PrefillReply(7, -0.5, 16, None, HANDLE))
        decode = DecodeCall("r1", [1, 2, 3], PARAMS, HANDLE, first_token=7)
        replies = [r async for r in client.decode(decode)]
        assert replies == [
            DecodeReply(
                [5],
                [],
                False,
                None,
                16,
                False,
                64,
                0.25,
                prompt_logprobs=[-1.5, -0.25],
                prompt_top_logprobs=[((9, -0.5),), ((4, -0.25),)],
            ),
            DecodeReply([6], [], True, "length", 16),
        ]
        # What the worker side parsed: the same objects (the lease's time left is less).
        assert calls.seen[0] == call and len(calls.seen) == 2
        assert_same_but_lease(calls.seen[1], decode)

    _with_worker(test)


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (PrefillCall("", [1], PARAMS), "invalid_argument", "request_id is required"),
        (PrefillCall("decode-only", [1], PARAMS), "failed_precondition", "does not prefill"),
        (
            DecodeCall("r", [1], PARAMS, first_token=3, generated_token_ids=[4]),
            "invalid_argument",
            "resumed",
        ),
        (DecodeCall("dies", [1], PARAMS), "unavailable", "engine loop has stopped"),
    ],
)
def test_worker_errors_arrive_as_worker_errors(call: object, code: str, message: str) -> None:
    async def test(client: WorkerClient, calls: ScriptedCalls) -> None:
        with pytest.raises(WorkerError) as e:
            if isinstance(call, PrefillCall):
                await client.prefill(call, timeout_s=5)
            else:
                assert isinstance(call, DecodeCall)
                _ = [r async for r in client.decode(call)]
        assert e.value.code == code and message in e.value.details
        assert e.value.rejected == (code == "invalid_argument")  # the client's fault: a 400

    _with_worker(test)


def test_abort_stats_health_and_dump() -> None:
    async def test(client: WorkerClient, calls: ScriptedCalls) -> None:
        assert await client.abort("known") is True
        assert await client.abort("unknown") is False
        stats = await client.stats()
        assert (stats.running, stats.waiting, stats.used_blocks, stats.idle) == (1, 2, 24, False)
        assert await client.health() == HealthReply(True, "w-0", "both")
        assert await client.dump_kv() == KVDump("w-0", 123, 9, [2**64 - 1], 16)

    _with_worker(test)


def test_an_unreachable_worker_is_a_worker_error() -> None:
    async def test() -> None:
        client = WorkerClient("127.0.0.1:1")
        try:
            with pytest.raises(WorkerError) as e:
                await client.stats(timeout_s=2)
            assert e.value.code in ("unavailable", "deadline_exceeded")
        finally:
            await client.close()

    asyncio.run(test())


def test_a_closed_channel_is_a_worker_error_too() -> None:
    """A worker the router dropped (its channel closed) while a call was being started."""

    async def test() -> None:
        client = WorkerClient("127.0.0.1:1")
        await client.close()
        calls = (
            client.abort("r", timeout_s=1),
            client.serving(timeout_s=1),
            anext(client.decode(DecodeCall("r", [1], PARAMS))),
        )
        for call in calls:
            with pytest.raises(WorkerError) as e:
                await call
            assert e.value.code == "closed" and not e.value.rejected

    asyncio.run(test())
