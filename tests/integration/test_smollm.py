"""The real default model (SmolLM2-135M-Instruct, GGUF from the PyPI wheel) against
transformers loading the same GGUF file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, SamplingParams
from engine.model.quant import QuantLinear
from tests.helpers.hf_reference import hf_greedy
from tests.integration.conftest import SMOLLM_QUANT_ROWS

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
]


def test_greedy_matches_transformers_on_gguf(smollm_f32: Engine, smollm_hf: object) -> None:
    engine = smollm_f32
    assert engine.tokenizer is not None
    # the default path: decode GEMMs read the GGUF's Q4_1/Q8_0 blocks (engine/model/quant.py)
    linear = engine.runner.model.ops.linear  # type: ignore[attr-defined]
    assert isinstance(linear, QuantLinear) and linear.max_rows == SMOLLM_QUANT_ROWS, linear
    prompts = [
        engine.tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS
    ]
    params = SamplingParams(max_tokens=64, ignore_eos=True, logprobs=True)
    ours = engine.generate(prompts, params)  # one continuous batch
    for prompt, got in zip(prompts, ours, strict=True):
        want_tokens, want_lps = hf_greedy(smollm_hf, prompt, 64)
        assert got.token_ids == want_tokens
        assert max(abs(a - b) for a, b in zip(got.logprobs, want_lps, strict=True)) < 1e-3
    engine.pool.check_integrity()
    assert engine.pool.is_idle()


def test_stop_string_is_never_emitted(smollm_f32: Engine) -> None:
    engine = smollm_f32
    assert engine.tokenizer is not None
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}])
    (plain,) = engine.generate([prompt], SamplingParams(max_tokens=20))
    assert "Paris" in plain.text
    (stopped,) = engine.generate([prompt], SamplingParams(max_tokens=20, stop=("Paris",)))
    assert stopped.finish_reason == "stop"
    assert "Paris" not in stopped.text
    assert plain.text.startswith(stopped.text)


def test_seeded_sampling_is_reproducible(smollm_f32: Engine) -> None:
    engine = smollm_f32
    prompt = "Once upon a time"
    a, b, c = (
        engine.generate([prompt], SamplingParams(max_tokens=24, temperature=1.0, seed=s))[
            0
        ].token_ids
        for s in (7, 7, 8)
    )
    assert a == b
    assert a != c


def test_cli_generate_names_paris(smollm_path: Path) -> None:
    tandem = Path(sys.executable).with_name("tandem")
    env = dict(os.environ, TANDEM_MODEL_CACHE=str(smollm_path.parent.parent))
    done = subprocess.run(
        [
            str(tandem),
            "generate",
            "--prompt",
            "What is the capital of France?",
            "--max-tokens",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
