"""Registry records signed with the cluster token, so that being able to write Redis is not
enough to register a worker: a forged record could otherwise receive every prompt, or
point decode workers at a fake NIXL agent (the agent metadata lives in the record).

    stored value  =  VERSION (2 bytes) | HMAC-SHA256(key, VERSION | record) (32) | record
    key           =  the cluster token's bytes (TANDEM_CLUSTER_TOKEN, cluster_token.py)

The MAC covers the version too, so a value cannot be re-read under another format. No
proto change: the signature wraps the `WorkerRecord` bytes instead of living in them.

Without a token the cluster is open anyway (a worker's gRPC then takes any caller): records
carry an HMAC under the empty key, which proves nothing but keeps one format. A reader
with a token refuses them, as a worker with a token refuses a caller without one.
"""

from __future__ import annotations

import hashlib
import hmac

VERSION = b"T1"
DIGEST_BYTES = 32  # SHA-256
_HEADER = len(VERSION) + DIGEST_BYTES


def signing_key(token: str | None) -> bytes:
    return token.encode() if token else b""


def _digest(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, VERSION + payload, hashlib.sha256).digest()


def sign(key: bytes, payload: bytes) -> bytes:
    return VERSION + _digest(key, payload) + payload


def verify(key: bytes, value: bytes) -> bytes | None:
    """The record bytes inside `value` if it was signed with `key`; None if it was not
    (unsigned, another version, a changed byte, another key)."""
    if len(value) < _HEADER or not value.startswith(VERSION):
        return None
    given, payload = value[len(VERSION) : _HEADER], value[_HEADER:]
    return payload if hmac.compare_digest(given, _digest(key, payload)) else None
