"""Validation of SamplingParams and the engine configuration dataclasses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.parallel.launch import rank_device
from engine.request import Request, Status
from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SamplingParams

# ---- SamplingParams -----------------------------------------------------------------


def test_sampling_defaults() -> None:
    p = SamplingParams()
    assert p.max_tokens == 16
    assert p.temperature == 0.0 and p.greedy
    assert p.top_k == 0 and p.top_p == 1.0
    assert p.stop == () and p.stop_token_ids == ()
    assert p.min_tokens == 0 and not p.logprobs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.0000001}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": ["x" * (MAX_STOP_CHARS + 1)]}, "stop"),
        ({"stop": [str(i) for i in range(MAX_STOP_STRINGS + 1)]}, "stop"),
    ],
)
def test_sampling_params_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 1},
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"top_p": 1e-9},
        {"top_p": 1.0},
        {"top_k": 0},
        {"top_k": 1},
        {"min_tokens": 4, "max_tokens": 4},
        {"stop": ["a"]},
        {"stop": tuple(f"{i:02d}".ljust(MAX_STOP_CHARS, "x") for i in range(MAX_STOP_STRINGS))},
    ],
)
def test_sampling_params_accepts_boundaries(kwargs: dict[str, object]) -> None:
    p = SamplingParams(**kwargs)  # type: ignore[arg-type]
    for k, v in kwargs.items():
        assert getattr(p, k) == (tuple(v) if isinstance(v, list) else v)


def test_sampling_params_normalises_lists_to_tuples() -> None:
    p = SamplingParams(stop=["a", "b"], stop_token_ids=[3, 4])  # type: ignore[arg-type]
    assert p.stop == ("a", "b")
    assert p.stop_token_ids == (3, 4)
    hash(p)  # frozen and hashable once normalised


def test_sampling_params_greedy_flag() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=0.01).greedy


def test_sampling_params_is_frozen() -> None:
    p = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_tokens = 3  # type: ignore[misc]


# ---- Request ------------------------------------------------------------------------


def test_request_rejects_empty_prompt() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        Request("r", [], SamplingParams(), arrival_time=0.0)


def test_request_initial_state() -> None:
    prompt = [5, 6, 7]
    r = Request("r", prompt, SamplingParams(), arrival_time=0.0)
    assert r.status is Status.WAITING
    assert r.token_ids == [5, 6, 7] and r.token_ids is not prompt
    assert r.num_prompt_tokens == r.num_tokens == 3
    assert r.output_token_ids == [] and r.num_output_tokens == 0
    r.token_ids.append(9)
    assert prompt == [5, 6, 7]
    assert r.output_token_ids == [9] and r.num_output_tokens == 1
    assert not r.finished


# ---- CacheConfig --------------------------------------------------------------------


@pytest.mark.parametrize("bs", [0, -4, 3, 6, 12, 24, 100])
def test_block_size_must_be_power_of_two(bs: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        CacheConfig(block_size=bs)


@pytest.mark.parametrize("bs", [1, 2, 4, 16, 64, 256])
def test_block_size_powers_of_two_accepted(bs: int) -> None:
    assert CacheConfig(block_size=bs).block_size == bs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_blocks": 0}, "num_blocks"),
        ({"num_blocks": -1}, "num_blocks"),
        ({"kv_cache_gb": 0.0}, "kv_cache_gb"),
        ({"kv_cache_gb": -1.0}, "kv_cache_gb"),
    ],
)
def test_cache_config_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CacheConfig(**kwargs)  # type: ignore[arg-type]


def test_cache_config_defaults() -> None:
    c = CacheConfig()
    assert c.block_size == 16 and c.num_blocks is None
    assert c.kv_cache_gb == 1.0 and c.enable_prefix_caching
    assert CacheConfig(num_blocks=1).num_blocks == 1


# ---- SchedulerConfig ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_seqs": -2}, "max_num_seqs"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
    ],
)
def test_scheduler_config_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SchedulerConfig(**kwargs)  # type: ignore[arg-type]


def test_scheduler_config_defaults() -> None:
    s = SchedulerConfig()
    assert (s.max_num_seqs, s.max_num_batched_tokens, s.enable_chunked_prefill) == (
        64,
        1024,
        True,
    )
    assert SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1).max_num_seqs == 1


# ---- EngineConfig -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"role": "router"}, "role"),
        ({"role": "Prefill"}, "role"),
        ({"dtype": "float64"}, "dtype"),
        ({"dtype": "fp16"}, "dtype"),
        ({"num_threads": 0}, "num_threads"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be positive"),
        ({"tensor_parallel_size": 2, "backend": "mock"}, "not with backend mock"),
        ({"tensor_parallel_size": 2, "enforce_eager": False}, "a compiled decode step"),
    ],
)
def test_engine_config_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EngineConfig(model="m", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "cpu", "cuda"),
    [
        ({}, True, False),  # default: CUDA graphs on a GPU, eager on a CPU
        ({"enforce_eager": True}, True, True),
        ({"enforce_eager": False}, False, False),
        ({"tensor_parallel_size": 2}, True, True),  # no captured step over ranks yet
    ],
)
def test_engine_config_eager_by_device(kwargs: dict[str, object], cpu: bool, cuda: bool) -> None:
    c = EngineConfig(model="m", **kwargs)  # type: ignore[arg-type]
    assert (c.eager_on("cpu"), c.eager_on("cuda")) == (cpu, cuda)


@pytest.mark.parametrize("role", ["prefill", "decode", "both"])
@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16", "float16"])
def test_engine_config_accepts_roles_and_dtypes(role: str, dtype: str) -> None:
    c = EngineConfig(model="m", role=role, dtype=dtype)  # type: ignore[arg-type]
    assert (c.role, c.dtype) == (role, dtype)


@pytest.mark.parametrize("role", ["prefill", "decode", "both"])
def test_tensor_parallel_workers_take_every_role(role: str) -> None:
    c = EngineConfig(model="m", role=role, tensor_parallel_size=2)  # type: ignore[arg-type]
    assert (c.role, c.tensor_parallel_size) == (role, 2)


def test_each_rank_has_its_own_gpu_and_shares_the_cpu() -> None:
    assert rank_device(torch.device("cuda"), 1) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 2), 1) == torch.device("cuda", 3)
    assert rank_device(torch.device("cpu"), 3) == torch.device("cpu")


def test_engine_config_defaults_and_nesting() -> None:
    c = EngineConfig(model="m")
    assert c.role == "both" and c.dtype == "auto" and c.device == "auto"
    assert c.cache == CacheConfig() and c.scheduler == SchedulerConfig()
    assert c.num_threads is None and c.max_model_len is None and c.seed == 0
    edge = EngineConfig(model="m", num_threads=1, max_model_len=1)
    assert (edge.num_threads, edge.max_model_len) == (1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.role = "decode"  # type: ignore[misc]


def test_what_remains_of_a_request_resumed_elsewhere() -> None:
    p = SamplingParams(max_tokens=10, min_tokens=5, temperature=0.7, seed=3, stop=["x"])
    rest = p.remaining(3)
    assert (rest.max_tokens, rest.min_tokens) == (7, 2)
    assert (rest.temperature, rest.seed, rest.stop) == (0.7, 3, ("x",))
    assert p.remaining(6).min_tokens == 0 and p.remaining(0) == p
    with pytest.raises(ValueError, match="max_tokens"):
        p.remaining(10)  # nothing would be left to generate
