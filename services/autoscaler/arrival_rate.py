"""Requests and prompt tokens per second arriving at the routers, over a window, from their
counters (services/cluster/arrivals.py): the change of each router's counts between its
own stamps, summed over the routers.

    router's counts  ─ kept per router, back to the longest window ─┐
    at its stamps        (a restart: its history begins again)      ├─> rate over W =
                                                                    │   Σ routers (count now
                                                                    │   - count W ago) / span

A router's span is W when its history covers W, else what it covers (a router just seen);
a router with a single stamp gives no rate yet, and no router with a rate is no data
(None): the forecast then contributes nothing, as before there was one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the policy calls no network (.importlinter)
    from services.cluster.arrivals import ArrivalCount


@dataclass(frozen=True, slots=True)
class Rates:
    requests: float  # requests/s
    prompt_tokens: float  # their prompts' tokens/s: the prefill work arriving
    # the output tokens/s they ask for at most; None where a router does not count them
    max_output_tokens: float | None = None
    arrived: int = 0  # the requests counted: how far the rate is from chance
    # of prompt_tokens, those the serving pool prefills whatever the prefill pool's state
    # (short prompts: services/router/local_prefill.always_local); None: not counted
    local_prompt_tokens: float | None = None

    def at_least(self, floor: Rates | None) -> Rates:
        """These rates one standard deviation under their count (a Poisson count of k
        arrivals is k +- sqrt(k)), never under `floor`'s: what a short window shows for
        sure over a longer one's. A chance burst of 14 arrivals in 2 s where 8 are usual
        reads 5.1/s, not 7/s; a steady rate reads as the longer window has it; a step to
        3x reads 2.4x at once. The mean ask and the share of short prompts stay this
        window's (the latest)."""
        k = 1.0 - math.sqrt(self.arrived) / self.arrived if self.arrived > 0 else 1.0
        requests = max(self.requests * k, floor.requests if floor else 0.0)
        prompt = max(self.prompt_tokens * k, floor.prompt_tokens if floor else 0.0)
        ask = self.asked_output
        asked = None if ask is None else ask * requests
        local = None if self.local_prompt_tokens is None else self.local_share * prompt
        return Rates(requests, prompt, asked, self.arrived, local)

    @property
    def local_share(self) -> float:
        """The share of the prompt tokens arriving that the serving pool prefills whatever
        the prefill pool's size; 0 where not counted."""
        if self.local_prompt_tokens is None or self.prompt_tokens <= 0:
            return 0.0
        return min(1.0, self.local_prompt_tokens / self.prompt_tokens)

    @property
    def asked_output(self) -> float | None:
        """The mean output an arriving request asks for at most (its max_tokens)."""
        if self.max_output_tokens is None or self.requests <= 0:
            return None
        return self.max_output_tokens / self.requests


class ArrivalRate:
    def __init__(self, keep_s: float) -> None:
        """`keep_s`: the longest window asked for (the stable window)."""
        self.keep_s = keep_s
        self._seen: dict[str, deque[ArrivalCount]] = {}

    def update(self, counts: Iterable[ArrivalCount]) -> None:
        """Take every live router's count; a router not among them is gone (its key lapsed)."""
        live = {c.router_id: c for c in counts}
        for gone in self._seen.keys() - live.keys():
            del self._seen[gone]
        for rid, c in live.items():
            kept = self._seen.setdefault(rid, deque())
            if kept and kept[-1].started_ms != c.started_ms:
                kept.clear()  # restarted: its count began again
            if kept and c.stamp_ms <= kept[-1].stamp_ms:
                continue  # not published since the last read: nothing new
            kept.append(c)
            while len(kept) > 1 and kept[1].stamp_ms <= c.stamp_ms - 1000 * self.keep_s:
                kept.popleft()  # the oldest is kept while the next one is inside the window

    def per_s(self, window_s: float) -> Rates | None:
        """What arrived a second over the last `window_s` of each router's stamps; None:
        no data."""
        rates = [r for kept in self._seen.values() if (r := _rate(kept, window_s)) is not None]
        if not rates:
            return None
        return Rates(
            sum(r.requests for r in rates),
            sum(r.prompt_tokens for r in rates),
            _sum_counted([r.max_output_tokens for r in rates]),
            sum(r.arrived for r in rates),
            _sum_counted([r.local_prompt_tokens for r in rates]),
        )


def _sum_counted(rates: list[float | None]) -> float | None:
    """Their sum; None where a router does not count it (a partial sum would mislead)."""
    return None if None in rates else sum(r for r in rates if r is not None)


def _change_per_s(last: int | None, first: int | None, span_s: float) -> float | None:
    if last is None or first is None:
        return None
    return max(last - first, 0) / span_s


def _rate(kept: deque[ArrivalCount], window_s: float) -> Rates | None:
    if len(kept) < 2:
        return None
    last = kept[-1]
    since = last.stamp_ms - 1000 * window_s
    # the latest count at or before the window's start, or the oldest there is
    first = next((c for c in reversed(kept) if c.stamp_ms <= since), kept[0])
    span_s = (last.stamp_ms - first.stamp_ms) / 1000
    arrived = max(last.total - first.total, 0)
    return Rates(
        arrived / span_s,
        max(last.prompt_tokens - first.prompt_tokens, 0) / span_s,
        _change_per_s(last.max_output_tokens, first.max_output_tokens, span_s),
        arrived,
        _change_per_s(last.local_prompt_tokens, first.local_prompt_tokens, span_s),
    )
