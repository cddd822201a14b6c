"""What a worker's Decode yields to its gRPC handler (services/worker/handlers.py), which
wire/rpc.py turns into the wire's messages (a Prefill answers with wire's own PrefillReply)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.output import RequestOutput
from engine.transfer.exchange import ReadReport


@dataclass(slots=True)
class DecodeUpdate:
    output: RequestOutput
    report: ReadReport | None  # on the first update of a request whose KV was remote
