"""The router's listening socket, bound before anything else starts."""

from __future__ import annotations

import socket


def bind_listener(host: str, port: int) -> socket.socket:
    """The router's socket, bound now (port 0: a free one, printed in the banner).
    `tandem serve` binds it before its cluster starts: the port is then ours while Ray,
    Redis and the workers pick theirs, and a taken one fails at once, not a minute in."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"tandem: cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
