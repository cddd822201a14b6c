"""Requests that reached each router, for the autoscaler's forecast of demand: a counter per
router in Redis, which the autoscaler turns into an arrival rate (services/autoscaler/
arrival_rate.py).

    tandem:arrivals:<router_id>  ->  "<total> <prompt_tokens> <started_ms> <stamp_ms>
                                      <max_output_tokens> <local_prompt_tokens>"
                                      (PX ttl, renewed at each publish)

`total` (requests), `prompt_tokens` (their prompts' tokens), `max_output_tokens` (the
outputs they asked for at most: max_tokens, or the rest of the context) and
`local_prompt_tokens` (the tokens of the prompts it prefills on the serving worker whatever
the prefill pool's state: services/router/local_prefill.always_local) only grow while the
router lives (a value without the last fields, from an older router, is read as not
knowing them); `started_ms` names the router's life (a new value: it restarted and counts
from 0 again); `stamp_ms` is when the router read its counter, on its own clock, so the
rate is measured between two of its stamps however late the autoscaler reads them (as
worker heartbeats are). Arrivals are counted at the router, not at the workers: a request
refused by admission (429) is demand the pools did not meet, and exactly what the forecast
is for. A router that dies leaves a count that lapses with its TTL. Not signed, as the held
count is not: writing it needs Redis's password, and the worst a forged one does is grow
the pools within their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

DEFAULT_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class ArrivalCount:
    router_id: str
    total: int  # requests
    prompt_tokens: int  # their prompts' tokens: the prefill work arriving, known at once
    started_ms: int
    stamp_ms: int
    # the outputs they asked for at most (each one's max_tokens): an answer is never longer,
    # so it bounds how long they live (autoscaler/forecast.py); None: not counted
    max_output_tokens: int | None = None
    # of prompt_tokens, those no prefill worker will get (short prompts, ...): the sizing
    # leaves them to the decode pool (autoscaler/sizing.py); None: not counted
    local_prompt_tokens: int | None = None


class Arrivals:
    def __init__(self, client: redis.Redis, prefix: str = "tandem") -> None:
        self._r = client
        self._prefix = f"{prefix}:arrivals:"

    def publish(self, count: ArrivalCount, ttl_s: float = DEFAULT_TTL_S) -> None:
        value = f"{count.total} {count.prompt_tokens} {count.started_ms} {count.stamp_ms}"
        if count.max_output_tokens is not None:
            value += f" {count.max_output_tokens}"
            if count.local_prompt_tokens is not None:
                value += f" {count.local_prompt_tokens}"
        self._r.set(self._prefix + count.router_id, value, px=int(ttl_s * 1000))

    def read(self) -> list[ArrivalCount]:
        """Every live router's count, as last published."""
        keys = list(self._r.scan_iter(match=self._prefix + "*", count=500))
        if not keys:
            return []
        counts = []
        for key, value in zip(keys, self._r.mget(keys), strict=True):
            if value is not None:  # lapsed between the scan and the read
                counts.append(parse(_text(key).removeprefix(self._prefix), _text(value)))
        return counts


def parse(router_id: str, value: str) -> ArrivalCount:
    total, prompt_tokens, started_ms, stamp_ms, *rest = (int(v) for v in value.split())
    asked = rest[0] if rest else None
    local = rest[1] if len(rest) > 1 else None
    return ArrivalCount(router_id, total, prompt_tokens, started_ms, stamp_ms, asked, local)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
