"""What a worker's calls return to its gRPC handlers (services/worker/handlers.py), which
wire/rpc.py turns into the wire's messages."""

from __future__ import annotations

from dataclasses import dataclass

from engine.output import RequestOutput
from engine.request import TopLogprobs
from engine.transfer.exchange import KVHandle, ReadReport


@dataclass(slots=True)
class PrefillResult:
    first_token: int
    first_logprob: float | None
    num_cached_tokens: int
    finish_reason: str | None  # set when the first token already ends the request
    handle: KVHandle | None  # None when finished: nothing is held
    first_top_logprobs: TopLogprobs = ()


@dataclass(slots=True)
class DecodeUpdate:
    output: RequestOutput
    report: ReadReport | None  # on the first update of a request whose KV was remote
