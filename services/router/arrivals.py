"""This router's count of the requests that reached it, published every PUBLISH_S to Redis
for the autoscaler's forecast (services/cluster/arrivals.py). Counting is an integer add on
the request's path; only the publishing touches Redis, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from services.cluster.arrivals import ArrivalCount

PUBLISH_S = 1.0  # the autoscaler ticks every few seconds: a stamp a second is fresh enough
log = logging.getLogger(__name__)


class ArrivalCounter:
    def __init__(self, publish: Callable[[ArrivalCount], None] | None = None) -> None:
        """`publish` None: count, tell no one (a router without an autoscaler's Redis)."""
        self.total = 0
        self.prompt_tokens = 0
        self.max_output_tokens = 0
        self.local_prompt_tokens = 0
        self._publish = publish
        self._router_id = uuid.uuid4().hex[:12]
        self._started_ms = _now_ms()
        self._failing = False

    def arrived(self, prompt_tokens: int, max_output_tokens: int, local: bool) -> None:
        """`local`: the serving worker prefills this prompt whatever the prefill pool's state
        (services/router/local_prefill.always_local)."""
        self.total += 1
        self.prompt_tokens += prompt_tokens
        self.max_output_tokens += max_output_tokens
        if local:
            self.local_prompt_tokens += prompt_tokens

    def count(self) -> ArrivalCount:
        return ArrivalCount(
            self._router_id,
            self.total,
            self.prompt_tokens,
            self._started_ms,
            _now_ms(),
            self.max_output_tokens,
            self.local_prompt_tokens,
        )

    async def run(self) -> None:
        """Publish until cancelled; Redis away is logged once and retried each period."""
        while self._publish is not None:
            try:
                await asyncio.to_thread(self._publish, self.count())
                self._failing = False
            except Exception as e:
                if not self._failing:
                    log.warning("cannot publish the arrival count (%s): retrying", e)
                self._failing = True
            await asyncio.sleep(PUBLISH_S)


def _now_ms() -> int:
    return int(time.time() * 1000)
