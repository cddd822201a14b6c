"""Prefill and decode roles in one process: a prefill engine computes the prompt and holds
its blocks; a decode engine receives the blocks (copied here by hand; NIXL does it between
processes) and continues. The result must equal a single `both` engine, i.e. transformers."""

from __future__ import annotations

import random
from pathlib import Path

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.request import Status
from tests.helpers.engine_steps import drain as _drain
from tests.helpers.hf_reference import hf_greedy, load_hf


def _engine(path: Path, role: str) -> Engine:
    cfg = EngineConfig(
        model=str(path), role=role, dtype="float32", cache=CacheConfig(num_blocks=64)
    )  # type: ignore[arg-type]
    return Engine(cfg, load_tokenizer_files=False)


def test_prefill_then_remote_decode_matches_transformers(tiny_checkpoints: dict[str, Path]) -> None:
    path = tiny_checkpoints["llama"]
    prompt = [random.Random(11).randrange(512) for _ in range(45)]
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    prefill, decode = _engine(path, "prefill"), _engine(path, "decode")

    prefill.add_request("r", prompt, params)
    (first,) = _drain(prefill)
    held = prefill.held_request("r")
    assert held is not None
    # Held is a status, not a finish reason: the request goes on on the decode side.
    assert held.status is Status.HELD and held.finish_reason is None

    req = decode.add_request("r", prompt, params, remote_prefill=True)
    assert decode.step() == []  # admitted, blocks allocated, nothing computed
    assert req.status is Status.WAITING_FOR_REMOTE_KV and len(req.block_ids) == 3
    src, dst = held.block_ids, req.block_ids
    decode.runner.kv_cache[dst] = prefill.runner.kv_cache[src]
    decode.remote_kv_ready("r", first)
    assert prefill.release_held("r")

    rest = _drain(decode)
    expected, _ = hf_greedy(load_hf(path), prompt, 32)
    assert [first, *rest] == expected
    for engine in (prefill, decode):
        engine.pool.check_integrity()
        assert engine.pool.is_idle()


def test_failed_transfer_recomputes_locally(tiny_checkpoints: dict[str, Path]) -> None:
    path = tiny_checkpoints["llama"]
    prompt = [random.Random(12).randrange(512) for _ in range(30)]
    decode = _engine(path, "decode")
    decode.add_request(
        "r", prompt, SamplingParams(max_tokens=16, ignore_eos=True), remote_prefill=True
    )
    decode.step()
    decode.remote_kv_ready(
        "r", None, kv_valid=False
    )  # the read failed: compute the prompt here instead
    expected, _ = hf_greedy(load_hf(path), prompt, 16)
    assert _drain(decode) == expected
    decode.pool.check_integrity()
    assert decode.pool.is_idle()


def test_a_prefill_worker_captures_no_decode_step(tiny_checkpoints: dict[str, Path]) -> None:
    """It samples each request's first token only (engine/backends.py); the decode role's
    capture is test_hf_parity.py's test_compiled_decode_step."""
    cfg = EngineConfig(
        model=str(tiny_checkpoints["llama"]),
        role="prefill",
        dtype="float32",
        enforce_eager=False,
        compile_sizes=(1,),
    )
    assert Engine(cfg, load_tokenizer_files=False).runner.compiled is None  # type: ignore[attr-defined]
