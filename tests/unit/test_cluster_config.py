from __future__ import annotations

import pytest

from services.cluster.pools import PoolSpec
from services.cluster.serve import ClusterConfig
from services.router.server import served_model_name


def test_pools_share_the_node_between_workers() -> None:
    cfg = ClusterConfig(model="m.gguf", prefill_workers=1, decode_workers=3)
    assert cfg.specs(cpus=8, gpus=0) == [
        PoolSpec("prefill", 1, 2.0, 0.0),
        PoolSpec("decode", 3, 2.0, 0.0),
    ]
    # A GPU per worker when there are enough; never less than one CPU.
    assert cfg.specs(cpus=2, gpus=4)[1] == PoolSpec("decode", 3, 1.0, 1.0)


def test_colocated_runs_as_many_workers_with_both_roles() -> None:
    cfg = ClusterConfig(model="m", mode="colocated", prefill_workers=1, decode_workers=1)
    assert cfg.specs(cpus=2, gpus=0) == [PoolSpec("both", 2, 1.0, 0.0)]
    assert ClusterConfig(model="m", cpus_per_worker=0.5).specs(2, 0)[0].num_cpus == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefill_workers": 0}, "needs --prefill-workers >= 1"),
        ({"decode_workers": 0}, "at least one decode worker"),
        ({"mode": "mixed"}, "disagg or colocated"),
    ],
)
def test_bad_cluster_shapes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterConfig(model="m", **kwargs)  # type: ignore[arg-type]


def test_served_model_name() -> None:
    assert served_model_name("/c/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert served_model_name("/models/Qwen2-0.5B") == "Qwen2-0.5B"
