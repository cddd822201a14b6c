from __future__ import annotations

from dataclasses import replace

import pytest

from engine import CacheConfig, EngineConfig
from services.cli import build_parser
from services.cluster.cluster_config import ClusterConfig
from services.cluster.pools import PoolSpec, assign_cores, placement, reachable_from_other_nodes
from services.served_name import served_model_name
from services.worker.engine_flags import engine_config
from services.worker.process import WorkerNetConfig


def _cluster(model: str = "m", **kwargs: object) -> ClusterConfig:
    return ClusterConfig(EngineConfig(model=model), **kwargs)  # type: ignore[arg-type]


def test_pools_share_the_node_between_workers() -> None:
    cfg = _cluster("m.gguf", prefill_workers=1, decode_workers=3)
    assert cfg.specs(cpus=8, gpus=0) == [
        PoolSpec("prefill", 1, 2.0, 0.0),
        PoolSpec("decode", 3, 2.0, 0.0),
    ]
    # A GPU per worker when there are enough; fewer CPUs than workers are shared (asking
    # for one each, as this once did, left two of the four waiting for Ray forever).
    assert cfg.specs(cpus=2, gpus=4)[1] == PoolSpec("decode", 3, 0.5, 1.0)


def test_a_tensor_parallel_worker_takes_a_gpu_per_rank() -> None:
    cfg = ClusterConfig(EngineConfig(model="m", tensor_parallel_size=2), decode_workers=3)
    specs = cfg.specs(cpus=16, gpus=8)
    assert specs == [PoolSpec("prefill", 1, 4.0, 2.0, 2), PoolSpec("decode", 3, 4.0, 2.0, 2)]
    assert cfg.specs(cpus=16, gpus=4)[0].num_gpus == 0.0  # too few GPUs: none, as before
    assert specs[0].torch_threads == 2  # its 4 CPUs shared by its two ranks
    assert placement(specs, {})[0] == (
        "prefill: 1 worker, 4 CPUs each, 2 tensor-parallel ranks each, 2 torch threads a "
        "rank, 2 GPUs each, cores shared"
    )


def test_pools_of_different_sizes_lay_the_smaller_ones_kv_out_in_head_groups() -> None:
    """A decode rank reads whole head groups from prefill ranks (engine/transfer/heads.py):
    the pool with fewer ranks holds (larger size / its size) head groups a cache."""
    cfg = _cluster(prefill_tp=4, decode_tp=2, decode_workers=2)
    specs = cfg.specs(cpus=16, gpus=8)
    assert specs == [PoolSpec("prefill", 1, 5.0, 4.0, 4, 1), PoolSpec("decode", 2, 5.0, 2.0, 2, 2)]
    assert placement(specs, {})[1] == (
        "decode: 2 workers, 5 CPUs each, 2 tensor-parallel ranks each, 2 torch threads a "
        "rank, KV in 2 head groups, 2 GPUs each, cores shared"
    )
    assert _cluster(prefill_tp=1, decode_tp=2).pool_sizes() == {
        "prefill": (1, 2),
        "decode": (2, 1),
        "both": (1, 1),
    }
    with pytest.raises(ValueError, match="sets --kv-head-groups from the pools"):
        ClusterConfig(EngineConfig(model="m", cache=CacheConfig(kv_head_groups=2)))


def test_more_workers_than_cpus_share_them_with_one_torch_thread_each() -> None:
    cfg = _cluster(prefill_workers=1, decode_workers=2)
    specs = cfg.specs(cpus=2, gpus=0)
    assert specs == [PoolSpec("prefill", 1, 2 / 3, 0.0), PoolSpec("decode", 2, 2 / 3, 0.0)]
    assert sum(s.replicas * s.num_cpus for s in specs) == pytest.approx(2.0)  # all fit
    assert [s.torch_threads for s in specs] == [1, 1]
    assert PoolSpec("decode", 1, 3.0).torch_threads == 3
    assert assign_cores(specs, [0, 1]) == {}  # sharing: the OS balances them
    assert placement(specs, {}) == [  # printed in the serve banner
        "prefill: 1 worker, 0.67 CPUs each, 1 torch thread each, cores shared",
        "decode: 2 workers, 0.67 CPUs each, 1 torch thread each, cores shared",
    ]
    assert placement([PoolSpec("both", 1, 1.0, 1.0)], {}) == [
        "both: 1 worker, 1 CPU each, 1 torch thread each, 1 GPU each, cores shared"
    ]


def test_workers_with_whole_cpus_are_pinned_to_cores_of_their_own() -> None:
    specs = _cluster(prefill_workers=1, decode_workers=3).specs(cpus=8, gpus=0)
    cores = assign_cores(specs, [7, 6, 5, 4, 3, 2, 1, 0])
    assert cores == {
        "prefill-0": (0, 1),
        "decode-0": (2, 3),
        "decode-1": (4, 5),
        "decode-2": (6, 7),
    }
    assert placement(specs, cores) == [
        "prefill: 1 worker, 2 CPUs each, 2 torch threads each, pinned to cores 0,1",
        "decode: 3 workers, 2 CPUs each, 2 torch threads each, pinned to cores 2,3 | 4,5 | 6,7",
    ]
    # more CPUs asked for than the process may use (--cpus-per-worker): no pinning
    assert assign_cores([PoolSpec("decode", 3, 1.0)], [0, 1]) == {}


def test_colocated_runs_as_many_workers_with_both_roles() -> None:
    cfg = _cluster(mode="colocated", prefill_workers=1, decode_workers=1)
    assert cfg.specs(cpus=2, gpus=0) == [PoolSpec("both", 2, 1.0, 0.0)]
    assert _cluster(cpus_per_worker=0.5).specs(2, 0)[0].num_cpus == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefill_workers": 0}, "needs --prefill-workers >= 1"),
        ({"decode_workers": 0}, "at least one decode worker"),
        ({"mode": "mixed"}, "disagg or colocated"),
        ({"prefill_tp": 2, "decode_tp": 3}, "2 and 3: one must divide the other"),
        ({"prefill_tp": 0}, "must be positive"),
        ({"mode": "colocated", "decode_tp": 2}, "colocated workers all have"),
    ],
)
def test_bad_cluster_shapes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cluster(**kwargs)


def test_serve_and_worker_flags_build_the_same_engine_config() -> None:
    engine_flags = ["--engine=mock", "--dtype=float32", "--block-size=32", "--num-blocks=64"]
    engine_flags += ["--kv-cache-gb=0.5", "--mock-timing=decode_ms=3"]
    engine_flags += ["--max-num-seqs=8", "--max-num-batched-tokens=2048"]
    serve = build_parser().parse_args(["serve", *engine_flags])
    worker = build_parser().parse_args(
        ["worker", "--role=decode", "--worker-id=w", "--redis-url=r", *engine_flags]
    )
    want = engine_config(serve, "m.gguf")
    assert want.backend == "mock" and want.dtype == "float32"
    assert (want.cache.block_size, want.cache.num_blocks, want.cache.kv_cache_gb) == (32, 64, 0.5)
    assert want.mock.decode_ms == 3.0
    assert (want.scheduler.max_num_seqs, want.scheduler.max_num_batched_tokens) == (8, 2048)
    assert engine_config(worker, "m.gguf", role="decode") == EngineConfig(
        **{**_fields(want), "role": "decode"}
    )


def test_flag_choices_come_from_the_engine_config() -> None:
    for argv in (
        ["serve", "--dtype=float64"],
        ["serve", "--engine=gpu"],
        ["generate", "--prompt=x", "--dtype=float64"],
        ["worker", "--role=router", "--worker-id=w", "--redis-url=r"],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


def _fields(cfg: EngineConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


def test_served_model_name() -> None:
    assert served_model_name("/c/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert served_model_name("/models/Qwen2-0.5B") == "Qwen2-0.5B"


def test_workers_of_a_joined_ray_register_an_address_other_nodes_can_dial() -> None:
    net = WorkerNetConfig(redis_url="redis://127.0.0.1:1/0")
    spread = reachable_from_other_nodes(net, "10.0.3.7")
    assert (spread.host, spread.advertise_host) == ("0.0.0.0", "10.0.3.7")
    by_hand = replace(net, advertise_host="worker.example")
    assert reachable_from_other_nodes(by_hand, "10.0.3.7") == by_hand  # the user's wins
