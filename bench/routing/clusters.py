"""One routing mode on one workload: a fresh `tandem serve` (empty caches), the workload
driven against it, the cluster stopped. The same cluster flags for every mode; only
`--routing` changes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.routing.drive import Limits, drive
from bench.routing.workloads import Workload
from loadtest.datasets.base import TokenizerLike
from services.cluster.launch import start_serve

MODES = ("kv", "least-loaded", "round-robin")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What `tandem serve` runs; `mock_timing` is an engine.config.MockTiming spec."""

    engine: str = "mock"
    prefill_workers: int = 8
    decode_workers: int = 2
    block_size: int = 16
    num_blocks: int | None = 2048  # KV blocks per worker (mock); None: from --kv-cache-gb
    mock_timing: str = ""
    cpus_per_worker: float = 0.1

    def serve_args(self, routing: str) -> list[str]:
        args = [
            "--no-dashboard",
            f"--routing={routing}",
            f"--engine={self.engine}",
            f"--prefill-workers={self.prefill_workers}",
            f"--decode-workers={self.decode_workers}",
            f"--block-size={self.block_size}",
            f"--cpus-per-worker={self.cpus_per_worker}",
            "--local-prefill-tokens=0",  # every prompt goes to the prefill pool
            "--no-prefill-balance",
        ]
        if self.num_blocks is not None:
            args.append(f"--num-blocks={self.num_blocks}")
        if self.engine == "mock" and self.mock_timing:
            args.append(f"--mock-timing={self.mock_timing}")
        return args


def run_mode(
    spec: ClusterSpec,
    routing: str,
    workload: Workload,
    tokenizer: TokenizerLike,
    limits: Limits,
    logs: Path,
) -> dict[str, Any]:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{workload.name}-{spec.engine}-{routing}-serve.log"
    served = start_serve(log, *spec.serve_args(routing))
    try:
        result = asyncio.run(drive(served.url, workload, tokenizer, limits, spec.prefill_workers))
    finally:
        served.proc.stop()
    return result
