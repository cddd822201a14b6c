"""The engine's command-line flags and the one function that turns them into an EngineConfig,
shared by `tandem worker` and `tandem serve` (choices come from engine.config, written once).
"""

from __future__ import annotations

import argparse
import dataclasses

from engine import CacheConfig, EngineConfig
from engine.config import BACKENDS, DEFAULT_SEED, DTYPES, MockTiming, SchedulerConfig


def add_engine_args(ap: argparse.ArgumentParser) -> None:
    """The backend, dtype and KV pool flags."""
    ap.add_argument(
        "--engine",
        choices=BACKENDS,
        default="model",
        help="model: run the model; mock: no weights, modelled step times (engine/mock.py)",
    )
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run every step eagerly; --no-enforce-eager captures the decode step at "
        "start-up (CUDA graphs on a GPU, torch.compile on a CPU); default: captured on "
        "CUDA, eager on a CPU",
    )
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument(
        "--max-num-seqs",
        type=int,
        default=SchedulerConfig().max_num_seqs,
        help="requests a worker runs at once (vLLM's name; default %(default)s)",
    )
    ap.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=SchedulerConfig().max_num_batched_tokens,
        help="tokens a worker computes in one step; a longer prompt is chunked (vLLM's "
        "name; default %(default)s)",
    )
    ap.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="the longest context (prompt + output) a worker takes, below the model's own "
        "(vLLM's name; default: the model's); routers serve the smallest a worker registers",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seeds the draws of sampled requests that bring no seed of their own: the same "
        "requests in the same order sample the same tokens (vLLM's name; default %(default)s)",
    )
    ap.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="processes one worker's model is sharded over, rank 0 scheduling (vLLM's name; "
        "default %(default)s)",
    )
    ap.add_argument(
        "--kv-head-groups",
        type=int,
        default=1,
        help="lay each rank's KV cache out in this many head groups, so that peers with "
        "more tensor-parallel ranks read (or fill) a group per run of blocks: the ratio of "
        "their size to this worker's (tandem serve sets it from the pools' sizes; default "
        "%(default)s)",
    )
    ap.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="with --tensor-parallel-size, each rank holds whole experts, a share of them, "
        "instead of a share of every expert (vLLM's name)",
    )
    ap.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV cache per worker")
    ap.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV blocks per worker; overrides --kv-cache-gb (mock default: 4096)",
    )
    ap.add_argument(
        "--mock-timing",
        type=mock_timing_arg,
        default=MockTiming(),
        metavar="KEY=VALUE,...",
        help="change the mock's timing model (engine/mock.py), e.g. decode_ms=12,speed=2; "
        "defaults: " + ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(MockTiming)),
    )


def mock_timing_arg(spec: str) -> MockTiming:
    try:
        return MockTiming.parse(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def engine_config(
    args: argparse.Namespace, model: str, role: str = "both", num_threads: int | None = None
) -> EngineConfig:
    """The EngineConfig that `add_engine_args`' flags describe. A pool sets each worker's
    role and threads itself (services/cluster/pools.py)."""
    return EngineConfig(
        model=model,
        role=role,  # type: ignore[arg-type]  # checked in EngineConfig.__post_init__
        backend=args.engine,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        num_threads=num_threads,
        cache=CacheConfig(
            block_size=args.block_size,
            num_blocks=args.num_blocks,
            kv_cache_gb=args.kv_cache_gb,
            kv_head_groups=args.kv_head_groups,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens
        ),
        mock=args.mock_timing,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        enable_expert_parallel=args.enable_expert_parallel,
        seed=args.seed,
    )
