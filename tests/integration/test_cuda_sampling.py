"""The sampler's paths on a GPU's logits (engine/sampler.py keeps each request's state on
the CPU): logprobs, top and prompt logprobs, logit bias, penalties and seeded draws.
Needs CUDA + flashinfer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine import Engine, SamplingParams
from tests.helpers.gpu import cuda_engine, flashinfer_missing, run_steps

pytestmark = pytest.mark.skipif(flashinfer_missing() is not None, reason=str(flashinfer_missing()))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from tests.helpers.hf_reference import build_tiny_checkpoint

    path = build_tiny_checkpoint("llama", tmp_path_factory.mktemp("m") / "llama", head_dim=64)
    return cuda_engine(Path(path), eager=False)


def test_logit_bias_and_penalties(engine: Engine) -> None:
    prompt = [random.Random(1).randrange(512) for _ in range(20)]
    forced = SamplingParams(max_tokens=6, logit_bias=((7, 100.0),), repetition_penalty=1.2)
    (outs,) = run_steps(engine, [prompt], forced)
    assert [t for o in outs for t in o.new_token_ids] == [7] * 6


def test_seeded_draws_repeat_with_their_logprobs(engine: Engine) -> None:
    prompt = [random.Random(2).randrange(512) for _ in range(30)]
    params = SamplingParams(
        max_tokens=12,
        temperature=0.9,
        top_k=50,
        top_p=0.9,
        min_p=0.01,
        seed=3,
        top_logprobs=3,
        prompt_logprobs=2,
        frequency_penalty=0.5,
        ignore_eos=True,
    )
    a, b = run_steps(engine, [prompt, prompt], params)
    tokens = [[t for o in outs for t in o.new_token_ids] for outs in (a, b)]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 12
    tops = [t for o in a for t in o.new_top_logprobs]
    assert len(tops) == 12 and all(len(t) == 3 for t in tops)
    assert len(a[0].prompt_logprobs) == len(prompt) - 1
    assert all(lp <= 0.0 for o in a for lp in o.new_logprobs)
