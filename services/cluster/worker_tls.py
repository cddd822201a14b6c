"""TLS on the workers' gRPC, optional: the cluster token (cluster_token.py) keeps strangers
out, TLS also keeps the prompts, tokens and KV handles on the wire from being read or
changed by whoever sits on the network between nodes.

    TANDEM_TLS_CERT, TANDEM_TLS_KEY   a worker's certificate chain and key (PEM files):
                                      set, it serves TLS only
    TANDEM_TLS_CA                     the CA (PEM) a router checks workers' certificates
                                      against: set, it dials workers over TLS only

Read from the environment, as the token is: the same settings reach `tandem serve`'s Ray
actors and a Kubernetes pod's mounted Secret alike. A worker's certificate must name the
address it registers (an IP SAN for an IP), as the router checks it against that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

CERT_ENV, KEY_ENV, CA_ENV = "TANDEM_TLS_CERT", "TANDEM_TLS_KEY", "TANDEM_TLS_CA"


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_chain: bytes
    private_key: bytes = b""

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)])


def server_tls_from_env() -> ServerTls | None:
    """A worker's certificate and key, or None (plain gRPC). One without the other is a
    mistake that must not silently fall back to plain text."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not cert and not key:
        return None
    if not cert or not key:
        raise SystemExit(f"TLS needs both {CERT_ENV} and {KEY_ENV}")
    return ServerTls(Path(cert).read_bytes(), Path(key).read_bytes())


def client_ca_from_env() -> bytes | None:
    """The CA a router trusts for workers' certificates, or None (plain gRPC)."""
    ca = os.environ.get(CA_ENV)
    return Path(ca).read_bytes() if ca else None


def channel(address: str, ca: bytes | None) -> grpc.aio.Channel:
    """A channel to a worker: TLS checked against `ca` when given, else plain."""
    if ca is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))
