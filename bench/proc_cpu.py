"""A process's CPU time from its own counters (/proc/PID/stat): per request over a level,
and per second while idle. Used by bench-router."""

from __future__ import annotations

import os
import time


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, all threads) from the text of /proc/PID/stat. The
    command name (field 2) may hold spaces and parentheses: fields are counted after the
    last ')'."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of the whole line


def read_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return cpu_ticks(f.read())


def cpu_ms_per_request(before: int, after: int, requests: int, ticks_per_s: int) -> float | None:
    """CPU milliseconds per request between two samples; None when nothing completed."""
    if requests <= 0:
        return None
    return (after - before) * 1000.0 / ticks_per_s / requests


def cpu_ms_per_second(before: int, after: int, seconds: float, ticks_per_s: int) -> float:
    """CPU milliseconds per wall second between two samples: a process's background cost
    (heartbeats, the KV feed's polling) while no request runs."""
    return (after - before) * 1000.0 / ticks_per_s / seconds


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU ms per second with no request running."""
    before = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    after = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
    tps = ticks_per_second()
    return {name: cpu_ms_per_second(before[name], after[name], elapsed, tps) for name in pids}


def ticks_per_second() -> int:
    return int(os.sysconf("SC_CLK_TCK"))
