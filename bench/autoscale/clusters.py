"""The three clusters the ramp runs against, all `tandem serve` on mock workers with the
same engine and router flags:

    autoscaled   --autoscale within the bounds, windows scaled down to seconds (Pacing)
    static_min   the bounds' minimum, fixed; a prefill minimum of 0 runs as 1, because
                 `tandem serve` refuses a disaggregated cluster without prefill workers
                 (ClusterConfig: "disaggregated mode needs --prefill-workers >= 1")
    static_max   the bounds' maximum, fixed
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.cluster.launch import Served, start_serve

KINDS = ("autoscaled", "static_min", "static_max")
# decode step: 22 ms + 2 ms a sequence (1 worker: ~19 streams inside a 60 ms ITL);
# prompts at 2,000 tokens/s a worker. Workers sleep out their steps: cheap for the host.
TIMING = "decode_ms=20,decode_ms_per_seq=2,prefill_ms_per_token=0.5"


@dataclass(frozen=True, slots=True)
class Pacing:
    """The autoscaler's windows, in seconds (production: 60 s stable, 6 s panic, 15 s up
    and 120 s down cooldown): scaled down so that three clusters run in about ten minutes."""

    # The workers' heartbeat: a shorter interval reads the same records again (their last
    # rates stand, signals.read_pools) and decides nothing new.
    interval_s: float = 1.0
    panic_window_s: float = 2.0
    stable_window_s: float = 5.0
    up_cooldown_s: float = 1.0
    down_cooldown_s: float = 5.0

    def args(self) -> list[str]:
        return [
            f"--autoscale-interval-s={self.interval_s:g}",
            f"--panic-window-s={self.panic_window_s:g}",
            f"--stable-window-s={self.stable_window_s:g}",
            f"--up-cooldown-s={self.up_cooldown_s:g}",
            f"--down-cooldown-s={self.down_cooldown_s:g}",
        ]


@dataclass(frozen=True, slots=True)
class Setup:
    prefill: tuple[int, int] = (0, 2)  # MIN, MAX replicas
    decode: tuple[int, int] = (1, 3)
    itl_target_ms: float = 60.0
    ttft_target_s: float = 1.0
    pacing: Pacing = Pacing()
    timing: str = TIMING
    drain_s: float = 30.0
    # The router's default: decode workers also take the prompt work the prefill pool
    # cannot take in time (as the autoscaler's sizing assumes, sizing.py). Off (strict, as
    # tests/e2e/test_autoscale.py): every prompt is the prefill pool's while it has workers.
    prefill_balance: bool = True

    def __post_init__(self) -> None:
        for lo, hi in (self.prefill, self.decode):
            if not 0 <= lo <= hi:
                raise ValueError(f"bounds need 0 <= min <= max, got {lo}:{hi}")
        if self.decode[0] < 1:
            raise ValueError("the decode pool needs a worker at least")

    def sizes(self, kind: str) -> dict[str, int]:
        """Each pool's workers at the start (the autoscaled cluster: the minimum, but one
        prefill worker to start with, as `tandem serve` needs; it goes to its floor)."""
        at = 1 if kind == "static_max" else 0
        return {"prefill": max(self.prefill[at], 1), "decode": self.decode[at]}

    def serve_args(self, kind: str) -> list[str]:
        size = self.sizes(kind)
        args = [
            "--no-dashboard",
            "--engine=mock",
            f"--mock-timing={self.timing}",
            "--cpus-per-worker=0.1",
            "--local-prefill-tokens=0",  # every prompt is prefill work for the pool
        ]
        if not self.prefill_balance:
            args.append("--no-prefill-balance")
        args += [
            f"--prefill-workers={size['prefill']}",
            f"--decode-workers={size['decode']}",
        ]
        if kind != "autoscaled":
            return args
        return args + [
            "--autoscale",
            *self.pacing.args(),
            f"--prefill-replicas={self.prefill[0]}:{self.prefill[1]}",
            f"--decode-replicas={self.decode[0]}:{self.decode[1]}",
            f"--itl-target-ms={self.itl_target_ms:g}",
            f"--ttft-target-s={self.ttft_target_s:g}",
            "--ready-timeout-s=60",
            f"--scale-down-drain-s={self.drain_s:g}",
        ]

    def floors(self) -> dict[str, int]:
        return {"prefill": self.prefill[0], "decode": self.decode[0]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def start(setup: Setup, kind: str, logs: Path) -> Served:
    """`tandem serve` for `kind`, answering once its router does."""
    logs.mkdir(parents=True, exist_ok=True)
    return start_serve(logs / f"{kind}-serve.log", *setup.serve_args(kind))


def settle(read_sizes: Any, floors: dict[str, int], timeout_s: float) -> float:
    """Wait (at most `timeout_s`) for the pools to be at `floors`: the autoscaled cluster
    starts the ramp from its minimum. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if read_sizes() == floors:
            break
        time.sleep(0.5)
    return time.monotonic() - t0
