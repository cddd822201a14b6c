"""Inter-arrival statistics with a fixed seed."""

import numpy as np
import pytest

from loadtest.arrivals import arrival_offsets


def gaps(rate: float, burstiness: float, n: int = 5000, seed: int = 7) -> np.ndarray:
    offsets = arrival_offsets(n, rate, burstiness, seed)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    return np.diff(offsets)


def test_infinite_rate_releases_everything_at_once() -> None:
    assert arrival_offsets(4, float("inf"), 1.0, 0) == [0.0] * 4
    assert arrival_offsets(0, 5.0, 1.0, 0) == []


def test_poisson_gaps_are_exponential() -> None:
    g = gaps(rate=10.0, burstiness=1.0)
    assert g.mean() == pytest.approx(0.1, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.06)  # exponential: CV = 1
    # P(gap > mean) = e^-1 for an exponential
    assert (g > 0.1).mean() == pytest.approx(np.exp(-1), abs=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_keeps_the_rate_and_changes_the_spread(burstiness: float) -> None:
    g = gaps(rate=10.0, burstiness=burstiness)
    assert g.mean() == pytest.approx(0.1, rel=0.07)
    assert g.std() / g.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.1)


def test_same_seed_same_times() -> None:
    assert arrival_offsets(50, 3.0, 0.5, 11) == arrival_offsets(50, 3.0, 0.5, 11)
    assert arrival_offsets(50, 3.0, 0.5, 11) != arrival_offsets(50, 3.0, 0.5, 12)
