"""The router's drain on SIGTERM, in the order a load balancer needs:

    SIGTERM ──> /ready answers 503 at once; new requests are still accepted and served,
     |          each response with `Connection: close` (a kept-alive client reconnects,
     |          and its next connection goes to a router that is ready)
     +-- drain_delay_s ──> the listener closes: no new connections
     +-- at most drain_timeout_s ──> the requests in flight finish; then exit 0

A load balancer stops sending a router new requests only once it has noticed the router is
going: Kubernetes takes a terminating pod out of its endpoints at once, but kube-proxy and
ingresses apply that a few seconds later, and a balancer polling /ready waits for a failed
probe or two. Closing the listener at SIGTERM (uvicorn's own behaviour) refuses the
requests already on their way during that time. So the router keeps serving while /ready
fails, as Kubernetes' `preStop: sleep` convention does outside the process (vLLM's and
KServe's guides put one in front of vLLM's --shutdown-timeout drain; Envoy's drain answers
`Connection: close` the same way). The default delay (server.py) is 5 s, the usual
`preStop: sleep 5`: time for the removal from endpoints to propagate. Behind a balancer that
polls /ready, set it above the probe's period x failure threshold. Kubernetes'
terminationGracePeriodSeconds (30 s by default) must cover delay + drain timeout.

Ctrl-C (SIGINT) skips the delay, as before: a person at a terminal wants the process gone,
and nothing routes by its readiness. A second SIGTERM (or a Ctrl-C) during the delay ends
the delay at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)
_CLOSE = (b"connection", b"close")


class Drain:
    """Whether the router is draining; /ready reads it (services/router/app.py)."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the SIGTERM

    @property
    def active(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn, with the delay above between SIGTERM and the listener's close."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay_s = delay_s
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal handler (main thread, between two bytecodes): it only sets state; the
        loop acts on it in `on_tick`, every 0.1 s."""
        delay = sig == signal.SIGTERM and not self.drain.active and self.delay_s > 0
        self.drain.begin()
        self._close_connections()
        if not delay:
            super().handle_exit(sig, frame)  # stop accepting now (a second one: force quit)

    async def on_tick(self, counter: int) -> bool:
        draining = self.drain.since
        if draining is not None:
            self._announce()
            if time.monotonic() - draining >= self.delay_s:
                self.should_exit = True
        stop = await super().on_tick(counter)  # renews the default headers now and then
        if draining is not None:
            self._close_connections()
        return stop

    def _close_connections(self) -> None:
        """Every response from now on ends its connection (a request starting takes the
        default headers of that moment)."""
        headers = self.server_state.default_headers
        if _CLOSE not in headers:
            self.server_state.default_headers = [*headers, _CLOSE]

    def _announce(self) -> None:
        if self._announced or self.should_exit:
            return
        self._announced = True
        log.info(
            "draining: /ready answers 503; still serving for %.1f s, then no new connections "
            "and up to %s s for the requests in flight",
            self.delay_s,
            self.config.timeout_graceful_shutdown,
        )
