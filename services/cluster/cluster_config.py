"""What `tandem serve` starts: the cluster's shape (mode, pools, each pool's workers,
tensor-parallel sizes and KV head groups) and how the node's CPUs and GPUs are shared
out among the workers (services/cluster/pools.py starts them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine import EngineConfig
from services.cluster.pools import PoolSpec
from services.router.dispatch_config import MODES


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    engine: EngineConfig  # every worker's; each pool sets its role and torch threads
    mode: str = "disagg"
    prefill_workers: int = 1
    decode_workers: int = 1
    cpus_per_worker: float | None = None  # None: the node's CPUs shared out evenly
    # Secrets are kept out of repr (a logged config must not show them).
    redis_url: str | None = field(default=None, repr=False)
    dashboard: bool = True
    # what worker gRPC callers must show, and what registry records are signed with
    cluster_token: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)  # ours; None: a new one
    served_name: str = ""  # the workers' metrics' model_name; "": from the model's file
    # Each pool's tensor-parallel size (None: the engine's). Sizes that differ must divide
    # one another; the smaller pool's caches are laid out in head groups (pool_sizes).
    prefill_tp: int | None = None
    decode_tp: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be disagg or colocated, got {self.mode!r}")
        if self.decode_workers < 1:
            raise ValueError("at least one decode worker is needed")
        if self.prefill_workers < 0:
            raise ValueError("--prefill-workers must be >= 0")
        if self.mode == "disagg" and self.prefill_workers == 0:
            # Not a quiet decode-only cluster: say so (colocated mode is that, by name).
            raise ValueError(
                "disaggregated mode needs --prefill-workers >= 1 (or --mode colocated)"
            )
        if any(n is not None and n < 1 for n in (self.prefill_tp, self.decode_tp)):
            raise ValueError("a pool's tensor-parallel size must be positive")
        if self.mode == "colocated" and (self.prefill_tp or self.decode_tp):
            raise ValueError("colocated workers all have --tensor-parallel-size")
        if self.engine.cache.kv_head_groups != 1:
            raise ValueError("tandem serve sets --kv-head-groups from the pools' sizes")
        self.pool_sizes()  # raises where they do not divide one another

    def pool_sizes(self) -> dict[str, tuple[int, int]]:
        """Each pool's tensor-parallel size and KV head groups. A decode rank reads each of
        its head groups from the prefill rank that holds the same heads
        (engine/transfer/heads.py), so the pool with fewer ranks lays its caches out in
        (larger size / its size) groups."""
        default = self.engine.tensor_parallel_size
        sizes = {"prefill": self.prefill_tp or default, "decode": self.decode_tp or default}
        larger = max(sizes.values())
        if any(larger % n for n in sizes.values()):
            raise ValueError(
                f"prefill and decode tensor-parallel sizes {sizes['prefill']} and "
                f"{sizes['decode']}: one must divide the other (a decode rank reads whole "
                "head groups from prefill ranks)"
            )
        pools = {role: (n, larger // n) for role, n in sizes.items()}
        pools["both"] = (default, 1)  # colocated workers read no other pool's KV
        return pools

    def specs(self, cpus: float, gpus: float) -> list[PoolSpec]:
        """Pools with the node shared out evenly; colocated mode runs the same number of
        workers, each with both roles.

        A worker gets whole CPUs while there are enough to go round; with fewer CPUs than
        workers they share them (cpus/n each: Ray accepts fractions), where asking for one
        each would leave the rest waiting for CPUs that never come. Mock workers mostly
        sleep: they always share, and none takes a GPU. A tensor-parallel worker takes a GPU
        for each of its ranks (engine/parallel: rank i on the actor's i-th GPU); its ranks
        share its CPUs. Torch threads: PoolSpec."""
        n = self.prefill_workers + self.decode_workers
        counts = {"prefill": self.prefill_workers, "decode": self.decode_workers, "both": n}
        roles = ["both"] if self.mode == "colocated" else ["prefill", "decode"]
        if self.engine.backend == "mock":
            share = self.cpus_per_worker or cpus / n
            return [PoolSpec(role, counts[role], share, 0.0) for role in roles]
        per_cpu = self.cpus_per_worker or (float(cpus // n) if cpus >= n else cpus / n)
        sizes = self.pool_sizes()
        ranks = sum(counts[role] * sizes[role][0] for role in roles)
        specs = []
        for role in roles:
            tp, groups = sizes[role]
            gpus_each = float(tp) if gpus >= ranks else 0.0
            specs.append(PoolSpec(role, counts[role], per_cpu, gpus_each, tp, groups))
        return specs
