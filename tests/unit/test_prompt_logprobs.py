"""A prompt's own logprobs (engine/prompt_logprobs.py), on the mock backend: the real
scheduler and bookkeeping around a modelled forward pass whose logits are a function of
the tokens before each position. What the real model gives is checked against transformers
in tests/integration/test_smollm_top_logprobs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.config import MockTiming, SchedulerConfig
from engine.output import RequestOutput
from engine.prompt_logprobs import score_prompts
from engine.request import Request
from engine.scheduler import ScheduledChunk
from tests.helpers.mock_model import write_config_only

VOCAB, BS = 512, 16
PROMPT = [(7 * i + 3) % VOCAB for i in range(40)]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_config_only(tmp_path, VOCAB)


def _engine(model: Path, budget: int = 1024) -> Engine:
    cfg = EngineConfig(
        model=str(model),
        backend="mock",
        cache=CacheConfig(block_size=BS, num_blocks=64),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget),
        mock=MockTiming(speed=1000.0),
    )
    return Engine(cfg, load_tokenizer_files=False)


def _run(engine: Engine, rid: str, params: SamplingParams) -> list[RequestOutput]:
    engine.add_request(rid, PROMPT, params)
    outs: list[RequestOutput] = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == rid]
    return outs


def test_chunked_prompt_scores_as_whole_and_comes_with_the_first_token(model_dir: Path) -> None:
    params = SamplingParams(max_tokens=3, prompt_logprobs=2)
    whole = _run(_engine(model_dir), "a", params)
    chunked = _run(_engine(model_dir, budget=7), "a", params)  # 6 chunks, not block-aligned
    for outs in (whole, chunked):
        assert len(outs[0].prompt_logprobs) == len(PROMPT) - 1
        assert [len(t) for t in outs[0].prompt_top_logprobs] == [2] * (len(PROMPT) - 1)
        assert all(not o.prompt_logprobs for o in outs[1:])
        assert all(lp <= 0.0 for lp in outs[0].prompt_logprobs)
    assert chunked[0].prompt_logprobs == pytest.approx(whole[0].prompt_logprobs, abs=1e-6)
    assert chunked[0].prompt_top_logprobs == whole[0].prompt_top_logprobs


def test_a_scored_prompt_is_computed_whole_not_read_from_the_prefix_cache(
    model_dir: Path,
) -> None:
    engine = _engine(model_dir)
    first = _run(engine, "a", SamplingParams(max_tokens=2, prompt_logprobs=0))
    again = _run(engine, "b", SamplingParams(max_tokens=2, prompt_logprobs=0))
    plain = _run(engine, "c", SamplingParams(max_tokens=2))
    assert again[0].num_cached_tokens == 0
    assert again[0].prompt_logprobs == first[0].prompt_logprobs
    assert again[0].prompt_top_logprobs == []  # k = 0: the prompt tokens' own only
    assert plain[0].num_cached_tokens > 0 and plain[0].prompt_logprobs == []


def test_positions_scored_again_after_a_preemption_are_recorded_once() -> None:
    req = Request("r", list(range(10)), SamplingParams(prompt_logprobs=1), 0.0)
    chunk = ScheduledChunk(req, 0, 6, samples=False)
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    assert score_prompts([chunk], logits).shape == (0, VOCAB)
    score_prompts([chunk], logits)  # the same positions, recomputed
    want = torch.log_softmax(logits, -1)[torch.arange(6), torch.tensor(req.prompt_token_ids[1:7])]
    assert req.prompt_logprobs == pytest.approx(want.tolist(), abs=1e-6)
    last = ScheduledChunk(req, 6, 4, samples=True)  # positions 6..8 score, 9 samples
    rest = torch.randn(4, VOCAB)
    assert torch.equal(score_prompts([last], rest), rest[3:])
    assert len(req.prompt_logprobs) == len(req.prompt_top_logprobs) == 9


@pytest.mark.parametrize("k", [-1, 21])
def test_prompt_logprobs_out_of_range_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=k)
