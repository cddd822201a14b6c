"""The token stream (services/worker/token_stream.py, services/router/token_stream.py): a
`tandem worker` process (mock engine) and the router's client on one connection over
127.0.0.1. Calls share it and each gets what its rpc (Decode, Prefill) gives; a prefill
past its timeout is cancelled on the worker; a refusal ends one call
with its gRPC code and leaves the others; a call closed early is aborted on the worker; a
stranger (no token, a second hello, a frame too long) is cut off; a worker that dies ends
every call on it with "unavailable", and the next call dials again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.sampling_params import SamplingParams
from services.cluster.cluster_token import TOKEN_ENV, new_token
from services.cluster.launch import Proc, start_worker
from services.cluster.redis_server import RedisServer
from services.router.token_stream import TokenStream
from services.router.worker_client import WorkerClient
from services.router.worker_error import WorkerError
from services.wire import DecodeCall, DecodeReply, PrefillCall, stream

pytestmark = pytest.mark.slow


@dataclass
class Streamed:
    token: str
    worker: Proc  # role both
    grpc_address: str
    stream_address: str
    prefill_grpc: str  # a prefill worker's, whose prompts are held for a reader
    prefill_stream: str
    redis_url: str
    tmp: Path


def _start(
    tmp: Path, redis_url: str, model: Path, token: str, role: str = "both", name: str = ""
) -> tuple[Proc, str, str]:
    name = name or f"{role}-0"
    worker, address = start_worker(
        tmp, name, role, redis_url, model, "--engine=mock", env={TOKEN_ENV: token}
    )
    line = worker.wait_for("token stream on", 10)
    return worker, address, line.rsplit(" ", 1)[-1].strip()


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Streamed]:
    tmp = tmp_path_factory.mktemp("stream")
    token = new_token()
    with RedisServer() as redis:
        worker, address, stream_address = _start(tmp, redis.url, smollm_path, token)
        try:
            prefill, pre_address, pre_stream = _start(
                tmp, redis.url, smollm_path, token, role="prefill"
            )
            try:
                yield Streamed(
                    token,
                    worker,
                    address,
                    stream_address,
                    pre_address,
                    pre_stream,
                    redis.url,
                    tmp,
                )
            finally:
                prefill.stop(signal.SIGTERM)
        finally:
            worker.stop(signal.SIGTERM)


def _call(rid: str, n: int = 6, prompt: list[int] | None = None) -> DecodeCall:
    params = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)
    return DecodeCall(rid, [100 + i for i in range(40)] if prompt is None else prompt, params)


async def _tokens(replies: AsyncIterator[DecodeReply]) -> tuple[list[int], bool]:
    tokens, finished = [], False
    async for r in replies:
        tokens += r.token_ids
        finished = r.finished
    return tokens, finished


async def _idle(client: WorkerClient) -> None:
    """Until the worker runs nothing and holds no request's blocks (10 s at most)."""
    for _ in range(200):
        s = await client.stats()
        if s.running == 0 and s.waiting == 0 and s.used_blocks == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the worker still holds requests: {s}")


def test_calls_share_one_connection_and_get_what_grpc_gives(streamed: Streamed) -> None:
    async def run() -> None:
        ts = TokenStream(streamed.stream_address, streamed.token, None)
        grpc_only = WorkerClient(streamed.grpc_address, streamed.token)
        try:
            calls = [_call(f"share-{i}", prompt=[200 + i] * (20 + i)) for i in range(8)]
            over_stream = await asyncio.gather(*(_tokens(ts.decode(c)) for c in calls))
            conn = ts._conn
            again = [DecodeCall(f"g-{c.request_id}", c.prompt_token_ids, c.params) for c in calls]
            over_grpc = await asyncio.gather(*(_tokens(grpc_only.decode(c)) for c in again))
            assert over_stream == over_grpc
            assert all(finished and len(t) == 6 for t, finished in over_stream)
            await _tokens(ts.decode(_call("share-after")))
            assert ts._conn is conn  # one connection for all of them
            await _idle(grpc_only)
        finally:
            await ts.close()
            await grpc_only.close()

    asyncio.run(run())


def test_a_prefill_gets_what_grpc_gives(streamed: Streamed) -> None:
    async def run() -> None:
        ts = TokenStream(streamed.prefill_stream, streamed.token, None)
        client = WorkerClient(streamed.prefill_grpc, streamed.token)
        params = SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
        prompt = [300 + i for i in range(70)]
        try:
            ours = await ts.prefill(PrefillCall("pre-s", prompt, params), 10)
            theirs = await client.prefill(PrefillCall("pre-g", prompt, params), 10)
            assert ours.first_token == theirs.first_token
            assert ours.handle is not None and theirs.handle is not None
            assert ours.handle.block_ids and ours.handle.num_tokens == len(prompt)
            assert (await client.stats()).leases == 2  # both held for a reader
            for rid in ("pre-s", "pre-g"):  # as the router releases a prompt nobody reads
                assert await client.abort(rid)
            await _idle(client)
        finally:
            await ts.close()
            await client.close()

    asyncio.run(run())


def test_a_prefill_past_its_timeout_is_cancelled_on_the_worker(streamed: Streamed) -> None:
    async def run() -> None:
        ts = TokenStream(streamed.prefill_stream, streamed.token, None)
        client = WorkerClient(streamed.prefill_grpc, streamed.token)
        params = SamplingParams(max_tokens=8, ignore_eos=True)
        long_prompt = [400 + i % 1000 for i in range(6000)]  # ~0.5 s of the mock's prefill
        try:
            with pytest.raises(WorkerError) as late:
                await ts.prefill(PrefillCall("slow", long_prompt, params), 0.05)
            assert late.value.code == "deadline_exceeded"
            await _idle(client)  # dropped: nothing runs, no block or lease is held
            assert (await client.stats()).leases == 0
        finally:
            await ts.close()
            await client.close()

    asyncio.run(run())


def test_a_refusal_ends_its_call_with_the_rpcs_code_and_no_other(streamed: Streamed) -> None:
    async def run() -> None:
        ts = TokenStream(streamed.stream_address, streamed.token, None)
        try:
            long_one = ts.decode(_call("keeps-going", n=40))
            first = await anext(long_one)
            with pytest.raises(WorkerError) as bad:  # no prompt: the worker's ValueError
                await _tokens(ts.decode(_call("no-prompt", prompt=[])))
            assert bad.value.code == "invalid_argument" and bad.value.rejected
            with pytest.raises(WorkerError) as twice:  # an id in use on this connection
                await _tokens(ts.decode(_call("keeps-going")))
            assert twice.value.code == "invalid_argument"
            rest, finished = await _tokens(long_one)
            assert finished and len(first.token_ids + rest) == 40
        finally:
            await ts.close()

    asyncio.run(run())


def test_a_call_closed_early_is_aborted_on_the_worker(streamed: Streamed) -> None:
    async def run() -> None:
        ts = TokenStream(streamed.stream_address, streamed.token, None)
        client = WorkerClient(streamed.grpc_address, streamed.token)
        try:
            async with contextlib.aclosing(ts.decode(_call("left", n=5000))) as replies:
                await anext(replies)
                assert (await client.stats()).running == 1
            await _idle(client)  # the cancel reached it: nothing runs, no block is held
        finally:
            await ts.close()
            await client.close()

    asyncio.run(run())


def test_a_call_left_after_its_last_chunk_sends_no_cancel(streamed: Streamed) -> None:
    """The last chunk ends the request on the worker: a cancel would be a write, and a
    wake-up of the worker, for nothing (the router's generation stops at that chunk)."""

    async def run() -> None:
        ts = TokenStream(streamed.stream_address, streamed.token, None)
        try:
            await _tokens(ts.decode(_call("dial")))  # the connection, and its hello
            assert ts._conn is not None
            sent: list[bytes] = []
            send = ts._conn.out.send
            ts._conn.out.send = lambda frame: (sent.append(frame), send(frame))[1]  # type: ignore[method-assign]
            async with contextlib.aclosing(ts.decode(_call("done", n=3))) as replies:
                async for r in replies:
                    if r.finished:
                        break
            async with contextlib.aclosing(ts.decode(_call("left", n=5000))) as replies:
                await anext(replies)
            ups = [stream.up_from_bytes(f) for f in sent]
            assert [type(u).__name__ for u in ups] == ["Open", "Open", "Cancel"]
            assert ups[2] == stream.Cancel("left")
        finally:
            await ts.close()

    asyncio.run(run())


@pytest.mark.parametrize("token", ["", "not-the-token"])
def test_a_caller_without_the_token_is_refused(streamed: Streamed, token: str) -> None:
    async def run() -> WorkerError:
        ts = TokenStream(streamed.stream_address, token, None)
        try:
            with pytest.raises(WorkerError) as refused:
                await _tokens(ts.decode(_call("stranger")))
            return refused.value
        finally:
            await ts.close()

    refused = asyncio.run(run())
    assert refused.code == "unauthenticated"


def _raw(address: str, payload: bytes) -> bytes:
    """What the worker sends back to `payload` before it closes the connection."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def _framed(*payloads: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in payloads)


def test_a_peer_that_breaks_the_protocol_is_cut_off(streamed: Streamed) -> None:
    hello = stream.hello_frame(streamed.token)
    assert _raw(streamed.stream_address, _framed(stream.cancel_frame("x"))) == b""  # no hello
    assert _raw(streamed.stream_address, _framed(hello, hello)) == b""  # a second one
    too_long = _framed(hello) + struct.pack("<I", 1 << 30)
    assert _raw(streamed.stream_address, too_long) == b""
    # ... and a good caller is still served
    asyncio.run(_one_call(streamed))


async def _one_call(streamed: Streamed) -> None:
    ts = TokenStream(streamed.stream_address, streamed.token, None)
    try:
        tokens, finished = await _tokens(ts.decode(_call("after-strangers")))
    finally:
        await ts.close()
    assert finished and len(tokens) == 6


def test_a_worker_that_dies_ends_its_calls_and_the_next_call_dials_again(
    streamed: Streamed, smollm_path: Path
) -> None:
    tmp = streamed.tmp / "dies"
    tmp.mkdir()
    worker, _, address = _start(
        tmp, streamed.redis_url, smollm_path, streamed.token, name="both-dies"
    )

    async def run() -> None:
        ts = TokenStream(address, streamed.token, None)
        try:
            replies = ts.decode(_call("orphan", n=8000))
            await anext(replies)
            worker.proc.send_signal(signal.SIGKILL)
            with pytest.raises(WorkerError) as lost:
                await asyncio.wait_for(_tokens(replies), 10)
            assert lost.value.code == "unavailable"
            with pytest.raises(WorkerError) as gone:  # dialled again: nobody there
                await _tokens(ts.decode(_call("after")))
            assert gone.value.code == "unavailable"
        finally:
            await ts.close()

    try:
        asyncio.run(run())
    finally:
        worker.stop(signal.SIGKILL)
