"""Length-prefixed frames over an asyncio stream: the token stream's transport (worker.proto
StreamUp / StreamDown; services/wire/stream.py makes the payloads).

    frame:  | length: 4 bytes, little-endian | payload: `length` bytes |

A writer sends what its callers queued during one pass of the event loop in one write: a
decode step's tokens for many requests, delivered to their calls in one callback, leave in
one segment. Sockets get TCP_NODELAY (a frame goes now, not after Nagle's wait) and
keepalive probes (a peer whose node vanished without closing is noticed in ~25 s, where
a plain TCP connection would wait for hours).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import tempfile
from pathlib import Path

from services.cluster.worker_tls import ServerTls

MAX_FRAME_BYTES = 64 << 20  # a Decode call with a 1M-token prompt is ~5 MB
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3
_LEN = struct.Struct("<I")


class FrameError(ValueError):
    """The peer sent what no well-behaved peer sends: the connection is closed."""


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's payload. Raises asyncio.IncompleteReadError at the end of the
    stream, FrameError for a length past MAX_FRAME_BYTES."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if n > MAX_FRAME_BYTES:
        raise FrameError(f"a frame of {n} bytes (at most {MAX_FRAME_BYTES})")
    return await reader.readexactly(n)


class FrameWriter:
    """Frames queued by `send` leave together at the end of the loop's current pass."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._queued: list[bytes] = []

    def send(self, payload: bytes) -> None:
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued += (_LEN.pack(len(payload)), payload)

    def _flush(self) -> None:
        if self._queued and not self.writer.is_closing():
            self.writer.write(b"".join(self._queued))
        self._queued.clear()

    async def drain(self) -> None:
        """Waits while the peer reads slower than we write (the transport's high-water mark)."""
        await self.writer.drain()

    async def close(self, timeout_s: float = 1.0) -> None:
        """Sends what is queued, then closes; a peer that does not take it within
        `timeout_s` (stopped, or gone without a word) is dropped at once."""
        self._flush()
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout_s)
        except TimeoutError:
            self.writer.transport.abort()
        except (ConnectionError, ssl.SSLError):
            pass


def tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


# ---- TLS, with the certificates the gRPC side uses (worker_tls.py) --------------------------
def server_context(tls: ServerTls) -> ssl.SSLContext:
    """`load_cert_chain` reads files only: the PEMs go through a private temporary folder."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(tls.cert_chain)
        key.touch(0o600)
        key.write_bytes(tls.private_key)
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    return ctx


def client_context(ca: bytes) -> ssl.SSLContext:
    """Checks the worker's certificate against `ca` and the address dialled (an IP SAN for
    an IP), as gRPC does."""
    return ssl.create_default_context(cadata=ca.decode())
