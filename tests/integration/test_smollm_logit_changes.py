"""Penalties and logit_bias on the real default model: greedy outputs equal transformers'
`generate` with the matching logits processors, token for token (float32, the same GGUF).

The reference and its processors: tests/helpers/hf_reference.py (`hf_generate`).
"""

from __future__ import annotations

import pytest

from engine import Engine, SamplingParams
from tests.helpers.hf_reference import hf_generate

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
QUESTIONS = [
    "List ten fruits, one per line.",
    "Repeat the word hello five times.",
]


def _prompts(engine: Engine) -> list[list[int]]:
    assert engine.tokenizer is not None
    return [
        engine.tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS
    ]


def _greedy(**changes: object) -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, logprobs=True, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"repetition_penalty": 1.3},
        {"repetition_penalty": 0.8},
        {"frequency_penalty": 1.0},
        {"presence_penalty": 1.5},
        {"frequency_penalty": 0.6, "presence_penalty": -0.4, "repetition_penalty": 1.1},
    ],
    ids=["repetition", "repetition-below-1", "frequency", "presence", "all-three"],
)
def test_penalties_match_transformers(
    smollm_f32: Engine, smollm_hf: object, changes: dict[str, float]
) -> None:
    prompts = _prompts(smollm_f32)
    plain = [c.token_ids for c in smollm_f32.generate(prompts, _greedy())]
    params = _greedy(**changes)
    ours = [c.token_ids for c in smollm_f32.generate(prompts, params)]  # one batch
    for prompt, got in zip(prompts, ours, strict=True):
        assert got == hf_generate(smollm_hf, prompt, params)
    assert ours != plain, "the penalty changed nothing: this case tests nothing"
    smollm_f32.pool.check_integrity()


def test_logit_bias_matches_transformers(smollm_f32: Engine, smollm_hf: object) -> None:
    prompts = _prompts(smollm_f32)
    plain = smollm_f32.generate(prompts, _greedy())
    # ban each answer's own first three tokens, and favour a token it did not pick
    for prompt, first in zip(prompts, plain, strict=True):
        banned = [(t, -100.0) for t in dict.fromkeys(first.token_ids[:3])]
        favoured = next(t for t in range(1000, 2000) if t not in first.token_ids)
        params = _greedy(logit_bias=(*banned, (favoured, 8.5)))
        (got,) = smollm_f32.generate([prompt], params)
        assert got.token_ids == hf_generate(smollm_hf, prompt, params)
        assert not {t for t, _ in banned} & set(got.token_ids)
        # the biased logits choose, the reported logprobs are still the model's own
        assert all(lp <= 0.0 for lp in got.logprobs)


def test_bias_and_penalties_together_in_a_mixed_batch(
    smollm_f32: Engine, smollm_hf: object
) -> None:
    """Requests with and without changes share steps: each row gets only its own."""
    prompts = _prompts(smollm_f32)
    params = [
        _greedy(repetition_penalty=1.25, logit_bias=((198, -5.0),), frequency_penalty=0.3),
        _greedy(),
    ]
    tag = "mixed"
    reqs = [
        smollm_f32.add_request(f"{tag}-{i}", p, sp)
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
    ]
    while smollm_f32.has_unfinished():
        smollm_f32.step()
    for req, prompt, sp in zip(reqs, prompts, params, strict=True):
        assert req.output_token_ids == hf_generate(smollm_hf, prompt, sp)
