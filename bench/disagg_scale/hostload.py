"""The whole host's CPU while a run goes on: busy cores from /proc/stat, sampled once a
second in a thread. On 2 cores shared by 16 mock workers, the router, Ray and the load
generator, a host near 2 busy cores stretches every modelled step: the figures are then
the host's, not the timing model's, and the report says so."""

from __future__ import annotations

import os
import threading
from types import TracebackType

SAMPLE_S = 1.0


def busy_idle() -> tuple[int, int]:
    """(all, idle + iowait) jiffies from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def busy_cores(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    total = after[0] - before[0]
    idle = after[1] - before[1]
    return cores * (1.0 - idle / total) if total > 0 else 0.0


class HostLoad:
    """`with HostLoad() as h: ...` then h.summary(): mean, p90 and max busy cores."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HostLoad:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last = busy_idle()
        while not self._stop.wait(SAMPLE_S):
            now = busy_idle()
            self.samples.append(busy_cores(last, now, self.cores))
            last = now

    def summary(self) -> dict[str, float | int]:
        s = sorted(self.samples)
        if not s:
            return {"cores": self.cores, "samples": 0}
        return {
            "cores": self.cores,
            "samples": len(s),
            "busy_mean": round(sum(s) / len(s), 2),
            "busy_p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 2),
            "busy_max": round(s[-1], 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
