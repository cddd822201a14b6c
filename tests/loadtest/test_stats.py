import math
import random

import numpy as np
import pytest

from loadtest.stats import Stats, percentile


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter
    with pytest.raises(ValueError):
        percentile([], 50)


def test_stats_in_milliseconds() -> None:
    s = Stats.of_seconds([0.010, 0.020, 0.030, 0.040])
    assert s.mean == pytest.approx(25.0)
    assert s.median == pytest.approx(25.0)
    assert s.std == pytest.approx(math.sqrt(125.0))  # population std, as numpy's default
    assert s.p90 == pytest.approx(37.0)
    assert s.p99 == pytest.approx(39.7)
    assert Stats.of_seconds([]) == Stats(0.0, 0.0, 0.0, 0.0, 0.0)


def test_stats_agree_with_numpy() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(20.0) for _ in range(1001)]
    s = Stats.of_seconds(values)
    ms = np.array(values) * 1000
    assert s.mean == pytest.approx(ms.mean())
    assert s.std == pytest.approx(ms.std())
    for q, got in ((50, s.median), (90, s.p90), (99, s.p99)):
        assert got == pytest.approx(np.percentile(ms, q))
