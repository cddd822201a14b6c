"""A request's logit changes (engine/logit_adjust.py) and min-p, worked by hand on small
vocabularies; tests/integration/test_smollm_logit_changes.py holds them to transformers."""

from __future__ import annotations

import pytest
import torch

from engine.logit_adjust import LogitAdjust
from engine.sampler import SampleRow, sample
from engine.sampling_params import MAX_LOGIT_BIAS, SamplingParams

LOGITS = [2.0, -1.0, 0.5, -3.0, 1.0, 0.0]


def adjusted(tokens: list[int], num_prompt: int, **kw: object) -> list[float]:
    logits = torch.tensor(LOGITS)
    LogitAdjust(SamplingParams(**kw), tokens, num_prompt).apply(logits)  # type: ignore[arg-type]
    return logits.tolist()


def test_bias_adds_to_its_tokens_only() -> None:
    got = adjusted([5], 1, logit_bias={0: -100.0, 3: 2.5})
    assert got == [-98.0, -1.0, 0.5, -0.5, 1.0, 0.0]


def test_repetition_divides_positive_and_multiplies_negative_logits_of_every_token_so_far():
    # prompt [0, 1], output [2, 2]: tokens 0, 1 and 2 have been seen; 3, 4, 5 have not
    got = adjusted([0, 1, 2, 2], 2, repetition_penalty=2.0)
    assert got == [1.0, -2.0, 0.25, -3.0, 1.0, 0.0]
    below_one = adjusted([0, 1], 2, repetition_penalty=0.5)  # < 1 favours repeats
    assert below_one == [4.0, -0.5, 0.5, -3.0, 1.0, 0.0]


def test_frequency_and_presence_count_the_output_only() -> None:
    # prompt [4, 4]; output [2, 2, 5]: 2 twice, 5 once; the prompt's 4 is not counted
    got = adjusted([4, 4, 2, 2, 5], 2, frequency_penalty=0.5, presence_penalty=1.0)
    assert got == pytest.approx([2.0, -1.0, 0.5 - 1.0 - 1.0, -3.0, 1.0, 0.0 - 0.5 - 1.0])


def test_counts_follow_the_request_as_it_grows() -> None:
    tokens = [1]  # the engine appends to this list as tokens come
    adjust = LogitAdjust(SamplingParams(frequency_penalty=1.0), tokens, 1)
    for step, token in enumerate([3, 3, 0]):
        logits = torch.zeros(6)
        adjust.apply(logits)
        if step == 2:  # two 3s so far, no 0 yet
            assert logits.tolist() == [0.0, 0.0, 0.0, -2.0, 0.0, 0.0]
        tokens.append(token)


def test_bias_and_penalties_change_the_choice_but_not_the_reported_logprob() -> None:
    logits = torch.tensor([LOGITS])
    params = SamplingParams(logprobs=True, logit_bias={0: -10.0})
    rows = [SampleRow(params, torch.Generator(), adjust=LogitAdjust(params, [5], 1))]
    tokens, lps = sample(logits, rows)
    assert tokens == [4]  # 0 was the argmax; its bias moved the choice to the next best
    assert lps[0] == pytest.approx(torch.log_softmax(logits[0], -1)[4].item())
    assert logits[0, 0] == 2.0  # the caller's logits are untouched


def test_min_p_keeps_only_tokens_near_the_likeliest() -> None:
    # probabilities relative to the top: token 0 (1.0), 4 (e^-1 = 0.37), 2 (e^-1.5 = 0.22)
    logits = torch.tensor([LOGITS])
    params = SamplingParams(temperature=1.0, min_p=0.3, seed=1)
    gen = torch.Generator().manual_seed(1)
    picked = {sample(logits, [SampleRow(params, gen)])[0][0] for _ in range(200)}
    assert picked == {0, 4}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"logit_bias": {1: 101.0}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {i: 1.0 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_out_of_range_changes_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kw)  # type: ignore[arg-type]


def test_only_requests_that_change_logits_get_an_adjuster() -> None:
    assert not LogitAdjust.wanted(SamplingParams(repetition_penalty=1.0, presence_penalty=0.0))
    assert LogitAdjust.wanted(SamplingParams(presence_penalty=-0.1))
    assert LogitAdjust.wanted(SamplingParams(logit_bias={7: 0.5}))


def test_changes_that_leave_no_token_fall_back_to_the_models_logits() -> None:
    """min_tokens bans the only tokens a grammar would allow: the step still samples (from
    the model's own logits) instead of failing every request in it."""

    class OnlyZero:
        def allowed(self) -> torch.Tensor:
            return torch.tensor([True] + [False] * (len(LOGITS) - 1))

    logits = torch.tensor([LOGITS, LOGITS])
    greedy = SampleRow(SamplingParams(), torch.Generator(), banned=(0,), constraint=OnlyZero())  # type: ignore[arg-type]
    drawn = SampleRow(
        SamplingParams(temperature=1.0),
        torch.Generator().manual_seed(0),
        banned=(0,),
        constraint=OnlyZero(),  # type: ignore[arg-type]
    )
    tokens, _ = sample(logits, [greedy, drawn])
    assert tokens[0] == 0 and 0 <= tokens[1] < len(LOGITS)
