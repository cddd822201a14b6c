"""GPU tests' helpers: why one cannot run here, a GPU engine, and how two bfloat16 runs
are compared (their kernels round differently, so greedy paths may part at near ties)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import CacheConfig, Engine, EngineConfig, SamplingParams, SchedulerConfig
from engine.output import RequestOutput

GREEDY_TOP5 = SamplingParams(max_tokens=32, ignore_eos=True, top_logprobs=5)


def flashinfer_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device on this machine; the flashinfer backend runs on GPUs only"
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return "flashinfer is not installed (pip install tandem[cuda])"
    return None


def cuda_engine(path: Path, eager: bool, attention: str = "flashinfer") -> Engine:
    """A bfloat16 engine on the GPU: decode steps captured at 1, 2 and 4 unless `eager`,
    a step budget small enough to chunk prefills and mix them with decodes."""
    cfg = EngineConfig(
        model=str(path),
        dtype="bfloat16",
        device="cuda",
        attention_backend=attention,
        enforce_eager=eager,
        compile_sizes=(1, 2, 4),
        cache=CacheConfig(num_blocks=128),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64),
    )
    return Engine(cfg, load_tokenizer_files=False)


def prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(512) for _ in range(n)] for n in lengths]


def run_steps(
    engine: Engine, batch: list[list[int]], params: SamplingParams
) -> list[list[RequestOutput]]:
    """Each prompt's step outputs, in order, the prompts run together to the end."""
    outs: dict[str, list[RequestOutput]] = {}
    for i, prompt in enumerate(batch):
        outs[f"r{i}"] = []
        engine.add_request(f"r{i}", prompt, params)
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            outs[out.request_id].append(out)
    assert not engine.has_unfinished()
    engine.pool.check_integrity()
    assert engine.pool.is_idle()
    return list(outs.values())


@dataclass(frozen=True, slots=True)
class Greedy:
    tokens: list[int]
    tops: list[dict[int, float]]  # each position's top logprobs

    @classmethod
    def of(cls, outs: list[RequestOutput]) -> Greedy:
        tops = [dict(t) for o in outs for t in o.new_top_logprobs]
        return cls([t for o in outs for t in o.new_token_ids], tops)


def assert_greedy_close(got: list[Greedy], want: list[Greedy], agree_first: int = 8) -> None:
    """Two greedy runs agree up to where they first part, and there each one's token is
    among the other's top logprobs: a near tie rounding can flip (vLLM's
    check_logprobs_close). And most runs agree on their first `agree_first` tokens, so a
    run that parts at once everywhere fails."""
    assert len(got) == len(want)
    agreeing = 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        pairs = enumerate(zip(g.tokens, w.tokens, strict=True))
        parted = next((p for p, (a, b) in pairs if a != b), None)
        if parted is None:
            agreeing += 1
            continue
        a, b = g.tokens[parted], w.tokens[parted]
        assert a in w.tops[parted] and b in g.tops[parted], f"run {i} parts at {parted}: {a}/{b}"
        agreeing += parted >= agree_first
    assert agreeing * 2 >= len(got), f"only {agreeing} of {len(got)} runs agree that long"
