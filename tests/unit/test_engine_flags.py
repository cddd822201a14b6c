"""The engine flags `tandem worker` and `tandem serve` share reach the EngineConfig, vLLM's
names included (services/worker/engine_flags.py)."""

from __future__ import annotations

import argparse

from engine.config import DEFAULT_SEED, EngineConfig
from services.worker.engine_flags import add_engine_args, engine_config


def _config(argv: list[str]) -> EngineConfig:
    ap = argparse.ArgumentParser()
    add_engine_args(ap)
    return engine_config(ap.parse_args(argv), "model.gguf", role="decode")


def test_vllms_flags_reach_the_engine_config() -> None:
    argv = ["--max-model-len", "2048", "--seed", "7", "--max-num-seqs", "8"]
    argv += ["--max-num-batched-tokens", "512"]
    cfg = _config(argv)
    assert (cfg.max_model_len, cfg.seed, cfg.role) == (2048, 7, "decode")
    assert (cfg.scheduler.max_num_seqs, cfg.scheduler.max_num_batched_tokens) == (8, 512)


def test_without_them_the_models_length_and_the_default_seed() -> None:
    cfg = _config([])
    assert cfg.max_model_len is None  # the model's own
    assert cfg.seed == DEFAULT_SEED
