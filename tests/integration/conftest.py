"""Fixtures of the integration tests that start whole clusters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fault_cluster import ClusterFactory, cluster_factory_fixture


@pytest.fixture
def cluster_factory(tmp_path: Path, smollm_path: Path) -> Iterator[ClusterFactory]:
    """Starts fault-test clusters (tests/helpers/fault_cluster.py); stops them after."""
    yield from cluster_factory_fixture(tmp_path, smollm_path)
