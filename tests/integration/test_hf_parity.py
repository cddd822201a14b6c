"""Greedy outputs equal Hugging Face transformers' token for token, on random-weight
Llama, Qwen2, Qwen3 and Qwen3-MoE checkpoints, under every scheduling path the engine has."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from engine import CacheConfig, Engine, EngineConfig, SamplingParams, SchedulerConfig
from engine.attention.torch_backend import TorchAttention
from engine.model.ops import TorchOps
from tests.helpers.engine_steps import record_batch_sizes
from tests.helpers.hf_reference import fp8_checkpoint, hf_greedy, load_hf

NEW_TOKENS = 64
LOGPROB_TOL = 1e-4
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=True)


class Reference:
    """HF greedy continuations, computed once per prompt."""

    def __init__(self, path: Path) -> None:
        self.model = load_hf(path)
        self._memo: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}

    def __call__(self, prompt: list[int]) -> tuple[list[int], list[float]]:
        key = tuple(prompt)
        if key not in self._memo:
            self._memo[key] = hf_greedy(self.model, prompt, NEW_TOKENS)
        return self._memo[key]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "qwen3_moe", "minimax_m2"])
def model(
    request: pytest.FixtureRequest, tiny_checkpoints: dict[str, Path]
) -> tuple[Path, Reference]:
    path = tiny_checkpoints[request.param]
    return path, Reference(path)


def make_engine(
    path: Path,
    num_blocks: int = 256,
    budget: int = 1024,
    max_seqs: int = 64,
    compile_sizes: tuple[int, ...] | None = None,
) -> Engine:
    cfg = EngineConfig(
        model=str(path),
        dtype="float32",
        enforce_eager=compile_sizes is None,
        compile_sizes=compile_sizes,
        cache=CacheConfig(block_size=16, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget),
    )
    return Engine(cfg, load_tokenizer_files=False)


def prompts_of(
    lengths: list[int], seed: int = 0, prefix: list[int] | None = None
) -> list[list[int]]:
    rng = random.Random(seed)
    return [(prefix or []) + [rng.randrange(512) for _ in range(n)] for n in lengths]


@dataclass
class Run:
    prompts: dict[str, list[int]] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[float]] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)  # prompt tokens from the prefix cache


def run(engine: Engine, schedule: dict[int, list[list[int]]]) -> Run:
    """Add prompts at the given step numbers and step until every request finishes."""
    r = Run()
    step = 0
    while step <= max(schedule) or engine.has_unfinished():
        for i, prompt in enumerate(schedule.get(step, [])):
            rid = f"s{step}-{i}"
            r.prompts[rid], r.tokens[rid], r.logprobs[rid] = prompt, [], []
            engine.add_request(rid, prompt, GREEDY)
        for out in engine.step():
            r.tokens[out.request_id] += out.new_token_ids
            r.logprobs[out.request_id] += out.new_logprobs
            r.cached[out.request_id] = out.num_cached_tokens
        step += 1
        assert step < 10_000, "engine did not finish"
    return r


def assert_matches(r: Run, ref: Reference) -> None:
    assert r.prompts
    for rid, prompt in r.prompts.items():
        ref_tokens, ref_lps = ref(prompt)
        assert r.tokens[rid] == ref_tokens, f"{rid} (prompt of {len(prompt)} tokens) diverged"
        assert max(abs(a - b) for a, b in zip(r.logprobs[rid], ref_lps, strict=True)) < LOGPROB_TOL


def assert_idle(engine: Engine) -> None:
    engine.pool.check_integrity()
    assert engine.pool.is_idle()
    assert not engine.requests


def test_batch_of_different_lengths(model: tuple[Path, Reference]) -> None:
    path, ref = model
    engine = make_engine(path)
    assert_matches(run(engine, {0: prompts_of([3, 16, 31, 77, 150])}), ref)
    assert_idle(engine)


def test_requests_join_mid_batch(model: tuple[Path, Reference]) -> None:
    path, ref = model
    engine = make_engine(path)
    late = prompts_of([20, 45, 9], seed=1)
    schedule = {0: prompts_of([12, 60], seed=2), 5: late[:1], 17: late[1:2], 40: late[2:]}
    assert_matches(run(engine, schedule), ref)
    assert_idle(engine)


def test_chunked_prefill(model: tuple[Path, Reference]) -> None:
    path, ref = model
    engine = make_engine(path, budget=24)  # every prompt below needs several chunks
    chunk_sizes: list[int] = []
    schedule = engine.scheduler.schedule

    def recording_schedule():  # noqa: ANN202
        out = schedule()
        chunk_sizes.extend(c.num_tokens for c in out.chunks if not c.samples)
        return out

    engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
    assert_matches(run(engine, {0: prompts_of([50, 101, 7], seed=3)}), ref)
    assert chunk_sizes and max(chunk_sizes) <= 24  # prompts really were split
    assert_idle(engine)


def test_prefix_cache_hits(model: tuple[Path, Reference]) -> None:
    path, ref = model
    engine = make_engine(path)
    shared = prompts_of([48], seed=4)[0]  # three full blocks
    first, *rest = prompts_of([5, 19, 33], seed=5, prefix=shared)
    cold = run(engine, {0: [first]})
    warm = run(engine, {0: rest})
    assert_matches(cold, ref)
    assert_matches(warm, ref)
    assert list(cold.cached.values()) == [0]
    assert list(warm.cached.values()) == [48, 48]  # the three shared blocks
    assert_idle(engine)


def test_preemption(model: tuple[Path, Reference]) -> None:
    path, ref = model
    # 4 requests of ~8 blocks each (60 prompt + 64 new tokens) in a pool of 20 blocks.
    engine = make_engine(path, num_blocks=20)
    assert_matches(run(engine, {0: prompts_of([60, 58, 61, 57], seed=6)}), ref)
    assert engine.scheduler.num_preemptions > 0
    assert_idle(engine)


def test_prefill_logits_match(model: tuple[Path, Reference]) -> None:
    """Full last-position logits after a chunked prefill over a cached prefix."""
    path, ref = model
    engine = make_engine(path, budget=16)
    captured: list[torch.Tensor] = []
    execute = engine.runner.execute

    def capture(chunks):  # noqa: ANN001, ANN202
        logits = execute(chunks)
        captured.append(logits)
        return logits

    engine.runner.execute = capture  # type: ignore[method-assign]
    prompt = prompts_of([70], seed=7)[0]
    engine.generate([prompt[:40]], SamplingParams(max_tokens=1))  # caches 2 blocks
    captured.clear()
    engine.generate([prompt], SamplingParams(max_tokens=1))
    with torch.inference_mode():
        expected = ref.model(torch.tensor([prompt])).logits[0, -1].float()
    ours = [t for t in captured if t.shape[0]][-1][0]
    torch.testing.assert_close(ours.cpu(), expected, atol=1e-4, rtol=1e-4)
    assert_idle(engine)


@pytest.mark.parametrize("kind", ["llama", "qwen3_moe", "minimax_m2"])
def test_bfloat16_tracks_transformers_bfloat16(
    tiny_checkpoints: dict[str, Path], kind: str
) -> None:
    """bf16 rounding differs between any two implementations, so token-exactness is asked of
    float32 only; in bf16 the first token (from the prefill) and its logprob must agree."""
    path = tiny_checkpoints[kind]
    cfg = EngineConfig(model=str(path), dtype="bfloat16", cache=CacheConfig(num_blocks=100))
    engine = Engine(cfg, load_tokenizer_files=False)
    assert engine.runner.kv_cache.dtype == torch.bfloat16
    hf = load_hf(path, torch.bfloat16)
    prompts = prompts_of([5, 17, 33, 70], seed=8)
    params = SamplingParams(max_tokens=1, logprobs=True)
    for prompt, got in zip(prompts, engine.generate(prompts, params), strict=True):
        want, want_lps = hf_greedy(hf, prompt, 1)
        assert got.token_ids == want
        assert abs(got.logprobs[0] - want_lps[0]) < 0.05
    assert_idle(engine)


def test_fp8_block_checkpoint_matches_transformers(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A block-quantized FP8 checkpoint (MiniMax-M2's format) is dequantized at load to the
    very weights transformers dequantizes it to, and greedy outputs match it."""
    src = tiny_checkpoints["minimax_m2"]
    path = fp8_checkpoint(src, tmp_path / "fp8", block=16)
    ref = Reference(path)
    engine = make_engine(path)
    ours = engine.runner.model.layers[0].qkv_weight[: 4 * 24]  # q_proj: 4 heads of 24
    theirs = ref.model.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(ours.cpu(), theirs, rtol=0, atol=0)
    original = load_hf(src).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(ours.cpu(), original)  # it was quantized: FP8 lost some bits
    assert_matches(run(engine, {0: prompts_of([3, 16, 77], seed=12)}), ref)
    assert_idle(engine)


def test_pure_torch_decode_path(model: tuple[Path, Reference]) -> None:
    """The SDPA decode path (CUDA, bfloat16, or no C++ compiler) matches too."""
    path, ref = model
    engine = make_engine(path)
    attn = engine.runner.attn
    assert isinstance(attn, TorchAttention)
    attn._native = False
    assert_matches(run(engine, {0: prompts_of([3, 16, 77], seed=9)}), ref)
    assert_idle(engine)


def test_reference_elementwise_ops(model: tuple[Path, Reference]) -> None:
    """The torch reference norms, RoPE and MLP activation (any device) match too."""
    path, ref = model
    engine = make_engine(path)
    engine.runner.model.ops = TorchOps()
    assert_matches(run(engine, {0: prompts_of([3, 16, 77], seed=10)}), ref)
    assert_idle(engine)


def test_compiled_decode_step(tiny_checkpoints: dict[str, Path]) -> None:
    """The captured decode step (engine/compiled.py) matches, padded batches included:
    seven prompts over at most four sequences (4, then 3 padded to 4), captured at 1, 2, 4."""
    path = tiny_checkpoints["llama"]
    ref = Reference(path)
    engine = make_engine(path, max_seqs=4, compile_sizes=(1, 2, 4))
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.sizes == (1, 2, 4)
    sizes = record_batch_sizes(compiled)
    assert_matches(run(engine, {0: prompts_of([3, 16, 31, 77, 150, 5, 9], seed=11)}), ref)
    assert_idle(engine)
    assert {3, 4} <= set(sizes), sizes  # a full batch and a padded one ran compiled


def test_cpu_decode_kernel_is_used() -> None:
    from engine.kernels import cpu

    assert cpu.load(), "the C++ decode kernels failed to build here"
