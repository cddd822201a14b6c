"""The token stream's frames: services/cluster/frames.py (length prefix, the cap, one write
per loop pass) over a real socket pair, and services/wire/stream.py's payloads."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from engine.output import RequestOutput
from engine.request import FinishReason
from engine.sampling_params import SamplingParams
from services.cluster import frames
from services.wire import DecodeCall, DecodeReply, PrefillCall, PrefillReply, stream
from services.worker.results import DecodeUpdate


async def _pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    return reader, writer, theirs


def test_frames_sent_in_one_pass_leave_in_one_write_and_read_back_in_order() -> None:
    async def run() -> tuple[list[bytes], list[bytes]]:
        reader, writer, theirs = await _pair()
        writes: list[bytes] = []
        write = writer.write

        def counted(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        writer.write = counted  # type: ignore[method-assign]
        out = frames.FrameWriter(writer)
        for p in (b"a", b"", b"ccc" * 1000):
            out.send(p)
        assert writes == []  # not yet: at the end of this pass
        await asyncio.sleep(0)
        theirs.sendall(theirs.recv(1 << 20))  # back to us, to be read as frames
        got = [await frames.read_frame(reader) for _ in range(3)]
        await out.close()
        theirs.close()
        return got, writes

    got, writes = asyncio.run(run())
    assert got == [b"a", b"", b"ccc" * 1000]
    assert len(writes) == 1 and writes[0][:5] == struct.pack("<I", 1) + b"a"


def test_a_frame_past_the_cap_and_a_cut_frame_are_refused() -> None:
    async def read(data: bytes) -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await frames.read_frame(reader)

    with pytest.raises(frames.FrameError):
        asyncio.run(read(struct.pack("<I", frames.MAX_FRAME_BYTES + 1)))
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(read(struct.pack("<I", 10) + b"short"))
    assert asyncio.run(read(struct.pack("<I", 2) + b"ok")) == b"ok"


def test_up_frames_round_trip() -> None:
    call = DecodeCall("r1", [1, 2, 3], SamplingParams(max_tokens=4), cache_salt="s")
    assert stream.up_from_bytes(stream.hello_frame("tok")) == stream.Hello("tok")
    assert stream.up_from_bytes(stream.hello_frame(None)) == stream.Hello("")
    opened = stream.up_from_bytes(stream.decode_frame(call))
    assert isinstance(opened, stream.Open) and opened.request_id == "r1"
    assert opened.call() == call
    assert stream.up_from_bytes(stream.cancel_frame("r1")) == stream.Cancel("r1")
    pre = PrefillCall("r2", [4, 5], SamplingParams(max_tokens=2))
    opened_prefill = stream.up_from_bytes(stream.prefill_frame(pre))
    assert isinstance(opened_prefill, stream.OpenPrefill) and opened_prefill.call() == pre


def test_down_frames_round_trip() -> None:
    out = RequestOutput(
        "r1", [7, 8], True, FinishReason.LENGTH, 3, 1, 2, new_logprobs=[-0.5, -0.25]
    )
    rid, reply = stream.down_from_bytes(stream.chunk_frame("r1", DecodeUpdate(out, None)))
    assert rid == "r1" and isinstance(reply, DecodeReply)
    assert (reply.token_ids, reply.logprobs, reply.finished) == ([7, 8], [-0.5, -0.25], True)
    assert reply.finish_reason == "length" and reply.num_cached_tokens == 1
    assert stream.down_from_bytes(stream.end_frame("r1")) == ("r1", stream.StreamEnd("ok", ""))
    answer = PrefillReply(11, -0.5, 4, None, None)  # -0.5: exact in a float32
    rid, got = stream.down_from_bytes(stream.prefilled_frame("r3", answer))
    assert rid == "r3" and isinstance(got, stream.Prefilled) and got.reply(0.0) == answer
    end = stream.end_frame("r2", "invalid_argument", "no prompt")
    assert stream.down_from_bytes(end) == ("r2", stream.StreamEnd("invalid_argument", "no prompt"))


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b""])
def test_bytes_that_are_no_frame_are_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        stream.up_from_bytes(payload)
    with pytest.raises(ValueError):
        stream.down_from_bytes(payload)
