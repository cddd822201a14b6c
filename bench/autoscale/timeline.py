"""Replicas over time, sampled from a running cluster's router, and what the samples say.

    every `every_s`, the router's /metrics:
      tandem_kv_blocks_total{worker}         -> ready[pool]    the workers in its view of
                                                               the registry (refreshed every
                                                               0.5 s), by name: <pool>-<n>
      tandem_autoscaler_desired_replicas     -> desired[pool]  what the autoscaler set
                                                               (absent on a static cluster)

Only HTTP: bench reaches services through their public entry points (.importlinter).
A pool's cost at a sample is max(ready, desired): a worker being started costs from the
moment it is asked for, before it serves (a retired one leaves the registry and the
desired count at once; its drain, seconds on the mock, is not charged). Each sample
holds until the next one (a step function).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.prometheus import parse_metrics

POOLS = ("prefill", "decode")
DESIRED = "tandem_autoscaler_desired_replicas"
WORKER_SERIES = "tandem_kv_blocks_total"  # one series per worker the router sees


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # offset from the ramp's start (negative before it)
    ready: dict[str, int]
    desired: dict[str, int] = field(default_factory=dict)  # {} on a static cluster

    def cost(self, pool: str) -> int:
        return max(self.ready.get(pool, 0), self.desired.get(pool, 0))


@dataclass(frozen=True, slots=True)
class Change:
    at_s: float
    pool: str
    before: int
    after: int


# ---- sampling a live cluster ---------------------------------------------------------------
class Sampler:
    """A thread that samples until stopped (or `max_samples`, a bound on a lost stop)."""

    def __init__(self, router_url: str, t0: float, every_s: float = 0.5) -> None:
        """`t0`: the ramp's start (time.monotonic()); samples are offsets from it."""
        self._metrics_url = router_url + "/metrics"
        self.every_s = every_s
        self.samples: list[Sample] = []
        self.t0 = t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def sizes(self) -> dict[str, int]:
        """Each pool's workers in the router's view, now."""
        return read(httpx.get(self._metrics_url, timeout=5).text)[0]

    def start(self, max_samples: int = 20_000) -> None:
        self._max = max_samples
        self._thread.start()

    def stop(self) -> list[Sample]:
        """The samples, the last taken now (what the pools ended at)."""
        self._stop.set()
        self._thread.join(10)
        try:
            ready, desired = read(httpx.get(self._metrics_url, timeout=5).text)
            self.samples.append(Sample(time.monotonic() - self.t0, ready, desired))
        except httpx.HTTPError:
            pass
        return self.samples

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set() and len(self.samples) < self._max:
                began = time.monotonic()
                try:
                    ready, desired = read(http.get(self._metrics_url).text)
                except httpx.HTTPError:
                    pass  # a missed sample: the previous one holds
                else:
                    self.samples.append(Sample(began - self.t0, ready, desired))
                self._stop.wait(max(0.0, self.every_s - (time.monotonic() - began)))


def read(metrics: str) -> tuple[dict[str, int], dict[str, int]]:
    """(workers per pool in the router's view, the autoscaler's desired size per pool)."""
    ready = dict.fromkeys(POOLS, 0)
    desired: dict[str, int] = {}
    for (name, labels), value in parse_metrics(metrics).items():
        tags = dict(labels)
        if name == WORKER_SERIES and (pool := tags["worker"].rsplit("-", 1)[0]) in ready:
            ready[pool] += 1
        elif name == DESIRED:
            desired[tags["pool"]] = int(value)
    return ready, desired


# ---- what the samples say -------------------------------------------------------------------
def worker_seconds(samples: list[Sample], start_s: float, end_s: float) -> float:
    """The integral of live workers (both pools, `Sample.cost`) over [start_s, end_s]."""
    total = 0.0
    for i, s in enumerate(samples):
        nxt = samples[i + 1].at_s if i + 1 < len(samples) else end_s
        lo, hi = max(s.at_s, start_s), min(nxt, end_s)
        if hi > lo:
            total += (hi - lo) * sum(s.cost(p) for p in POOLS)
    return total


def at(samples: list[Sample], t: float) -> Sample | None:
    """The sample in force at `t`: the last one taken at or before it."""
    found = None
    for s in samples:
        if s.at_s > t:
            break
        found = s
    return found


def changes(samples: list[Sample], start_s: float = 0.0) -> list[Change]:
    """Every change of a pool's desired size (of its registered size on a static
    cluster) from `start_s` on."""
    out: list[Change] = []
    prev: dict[str, int] = {}
    for s in samples:
        for pool in POOLS:
            n = s.desired.get(pool, s.ready.get(pool, 0))
            if pool in prev and n != prev[pool] and s.at_s >= start_s:
                out.append(Change(s.at_s, pool, prev[pool], n))
            prev[pool] = n
    return out


def too_close(changes_: list[Change], window_s: float) -> dict[str, list[tuple[float, float]]]:
    """Per pool, each pair of consecutive changes less than `window_s` apart: two changes
    in one stable window."""
    out: dict[str, list[tuple[float, float]]] = {p: [] for p in POOLS}
    for pool in POOLS:
        times = [c.at_s for c in changes_ if c.pool == pool]
        out[pool] = [(a, b) for a, b in itertools.pairwise(times) if b - a < window_s]
    return out


def ready_after(
    samples: list[Sample], pool: str, steps: list[tuple[str, float]], end_s: float
) -> list[dict[str, Any]]:
    """For each load step (name, start) during which the pool was asked to grow (its desired
    size rose above what it was at the step's start, before the next step): seconds from
    the step's start to the scale-up, and to the first new worker registered."""
    out: list[dict[str, Any]] = []
    bounds = [t for _, t in steps[1:]] + [end_s]
    for (name, t0), t1 in zip(steps, bounds, strict=True):
        base = at(samples, t0)
        if base is None or pool not in base.desired:
            continue
        up = next(
            (
                s
                for s in samples
                if t0 < s.at_s <= t1 and s.desired.get(pool, 0) > base.desired[pool]
            ),
            None,
        )
        if up is None:
            continue
        # a new worker: one beyond those serving or already asked for at the step's start
        known = max(base.ready.get(pool, 0), base.desired[pool])
        serving = next(
            (s for s in samples if s.at_s >= up.at_s and s.ready.get(pool, 0) > known), None
        )
        out.append(
            {
                "step": name,
                "from": base.desired[pool],
                "to": up.desired[pool],
                "decided_after_s": round(up.at_s - t0, 2),
                "ready_after_s": None if serving is None else round(serving.at_s - t0, 2),
            }
        )
    return out


def timeline(samples: list[Sample], pool: str) -> list[list[float]]:
    """[[t, ready, desired], ...] at each change of either (the JSON's, compact)."""
    out: list[list[float]] = []
    for s in samples:
        row = [round(s.at_s, 2), s.ready.get(pool, 0), s.desired.get(pool, s.ready.get(pool, 0))]
        if not out or out[-1][1:] != row[1:]:
            out.append(row)
    return out
