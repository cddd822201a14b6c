"""Token sampling: greedy, seeded draws, top-k/top-p truncation, bans and logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampler import SampleRow, sample
from engine.sampling_params import SamplingParams

LOGITS = torch.tensor(
    [
        [0.1, 2.0, -1.0, 0.5, 1.9, 0.0],
        [3.0, -2.0, 0.0, 1.0, 2.5, -0.5],
    ],
    dtype=torch.float32,
)


def row(seed: int = 0, banned: tuple[int, ...] = (), **kw: object) -> SampleRow:
    return SampleRow(SamplingParams(**kw), torch.Generator().manual_seed(seed), banned)  # type: ignore[arg-type]


def draws(logits: torch.Tensor, n: int, seed: int = 0, **kw: object) -> list[int]:
    """`n` draws from one 1-D logit row, all from a single generator."""
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(**kw)  # type: ignore[arg-type]
    rows = [SampleRow(params, gen) for _ in range(n)]
    tokens, _ = sample(logits.expand(n, -1).contiguous(), rows)
    return tokens


def test_greedy_is_argmax() -> None:
    tokens, logprobs = sample(LOGITS, [row(), row()])
    assert tokens == [1, 0]
    assert logprobs == [None, None]


def test_greedy_ties_take_the_first_maximum_as_torch_does() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    tokens, _ = sample(logits, [row(), row()])
    assert tokens == logits.argmax(dim=-1).tolist() == [1, 0]


def test_greedy_ignores_generator_state() -> None:
    a, _ = sample(LOGITS, [row(seed=1), row(seed=2)])
    b, _ = sample(LOGITS, [row(seed=3), row(seed=4)])
    assert a == b == [1, 0]


def test_same_seed_same_tokens() -> None:
    logits = torch.zeros(8)
    a = draws(logits, 64, seed=7, temperature=1.0)
    b = draws(logits, 64, seed=7, temperature=1.0)
    assert a == b
    assert len(set(a)) > 1  # actually random, not constant


def test_different_seeds_differ() -> None:
    logits = torch.zeros(10)
    a = draws(logits, 64, seed=1, temperature=1.0)
    b = draws(logits, 64, seed=2, temperature=1.0)
    assert a != b
    # Uniform over 10 tokens: agreement should be near 1/10, far from all 64.
    assert sum(x == y for x, y in zip(a, b, strict=True)) < 32


def test_seeded_row_independent_of_batch_neighbours() -> None:
    params = SamplingParams(temperature=1.0)
    logits = torch.zeros(3, 16)
    alone, _ = sample(logits[:1], [SampleRow(params, torch.Generator().manual_seed(5))])
    mixed, _ = sample(
        logits,
        [
            SampleRow(SamplingParams(temperature=0.7), torch.Generator().manual_seed(99)),
            SampleRow(params, torch.Generator().manual_seed(5)),
            SampleRow(SamplingParams(), torch.Generator().manual_seed(1)),
        ],
    )
    assert mixed[1] == alone[0]


def test_top_k_1_equals_greedy_at_temperature_1() -> None:
    for seed in range(20):
        rows = [row(seed, temperature=1.0, top_k=1), row(seed + 100, temperature=2.0, top_k=1)]
        tokens, _ = sample(LOGITS, rows)
        assert tokens == [1, 0]


def test_top_k_restricts_to_k_best() -> None:
    # Top 2 of row 0 are tokens 1 (2.0) and 4 (1.9).
    got = set(draws(LOGITS[0], 300, seed=3, temperature=2.0, top_k=2))
    assert got == {1, 4}


def test_top_k_larger_than_vocab_is_no_truncation() -> None:
    got = set(draws(torch.zeros(4), 200, seed=4, temperature=1.0, top_k=10))
    assert got == {0, 1, 2, 3}


def test_tiny_top_p_keeps_only_top_token() -> None:
    assert set(draws(LOGITS[0], 200, seed=5, temperature=2.0, top_p=1e-6)) == {1}
    assert set(draws(LOGITS[1], 200, seed=6, temperature=2.0, top_p=1e-6)) == {0}


def test_top_p_keeps_smallest_prefix_reaching_mass() -> None:
    # probs: [0.5, 0.3, 0.15, 0.05]; top_p=0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8).
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert set(draws(logits, 400, seed=8, temperature=1.0, top_p=0.7)) == {0, 1}
    # top_p=0.85 also needs token 2 (0.8 < 0.85).
    assert set(draws(logits, 400, seed=9, temperature=1.0, top_p=0.85)) == {0, 1, 2}


def test_banned_tokens_never_chosen_greedy() -> None:
    tokens, _ = sample(LOGITS, [row(banned=(1,)), row(banned=(0, 4))])
    assert tokens == [4, 3]


def test_banned_tokens_never_chosen_sampled() -> None:
    n = 300
    gen = torch.Generator().manual_seed(11)
    params = SamplingParams(temperature=2.0)
    rows = [SampleRow(params, gen, banned=(1, 4)) for _ in range(n)]
    tokens, _ = sample(LOGITS[0].expand(n, -1).contiguous(), rows)
    assert set(tokens) == {0, 2, 3, 5}


def test_banning_does_not_modify_callers_logits() -> None:
    logits = LOGITS.clone()
    sample(logits, [row(banned=(1,)), row()])
    assert torch.equal(logits, LOGITS)


def test_logprobs_are_log_softmax_of_raw_logits() -> None:
    rows = [
        row(logprobs=True),
        row(seed=3, temperature=1.5, top_k=3, logprobs=True),
    ]
    tokens, logprobs = sample(LOGITS, rows)
    for i, (t, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        raw = LOGITS[i].double()
        expected = raw[t].item() - math.log(raw.exp().sum().item())
        assert lp is not None
        assert lp == pytest.approx(expected, abs=1e-5)
    # Greedy row 0 took token 1: log(e^2 / sum e^x).
    assert tokens[0] == 1
    denom = sum(math.exp(x) for x in [0.1, 2.0, -1.0, 0.5, 1.9, 0.0])
    assert logprobs[0] == pytest.approx(2.0 - math.log(denom), abs=1e-5)


def test_logprobs_ignore_bans() -> None:
    """A ban (EOS before min_tokens) changes the choice, not the model's own logprob."""
    tokens, logprobs = sample(LOGITS[:1], [row(banned=(1,), logprobs=True)])
    assert tokens == [4]  # the best token once token 1 is banned
    denom = sum(math.exp(x) for x in [0.1, 2.0, -1.0, 0.5, 1.9, 0.0])
    assert logprobs[0] == pytest.approx(1.9 - math.log(denom), abs=1e-5)


def test_logprobs_only_for_rows_that_ask() -> None:
    _, logprobs = sample(LOGITS, [row(), row(logprobs=True)])
    assert logprobs[0] is None
    denom = sum(math.exp(x) for x in [3.0, -2.0, 0.0, 1.0, 2.5, -0.5])
    assert logprobs[1] == pytest.approx(3.0 - math.log(denom), abs=1e-5)


def test_empty_batch() -> None:
    assert sample(torch.zeros(0, 5), []) == ([], [])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_sampled_distribution_matches_softmax(temperature: float) -> None:
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7, -2.0])
    n = 2000
    tokens = draws(logits, n, seed=1234, temperature=temperature)
    expected = torch.softmax(logits.double() / temperature, dim=-1).tolist()
    counts = [tokens.count(k) for k in range(len(expected))]
    chi2 = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, expected, strict=True))
    # 4 degrees of freedom: P(chi2 > 23.5) < 1e-4. Fixed seed, so this is deterministic.
    assert chi2 < 23.5, (counts, [round(n * p) for p in expected])


def test_temperature_sharpens_distribution() -> None:
    logits = torch.tensor([1.0, 0.0, 0.0, 0.0])
    n = 1000
    cold = draws(logits, n, seed=2, temperature=0.25)
    hot = draws(logits, n, seed=2, temperature=2.0)
    # p(0) = e^4/(e^4+3) ~ 0.948 cold; e^0.5/(e^0.5+3) ~ 0.355 hot (~4 sigma margins).
    assert cold.count(0) / n == pytest.approx(0.948, abs=0.03)
    assert hot.count(0) / n == pytest.approx(0.355, abs=0.06)
