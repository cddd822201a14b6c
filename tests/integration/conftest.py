"""Fixtures of the integration tests that start whole clusters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, EngineConfig
from tests.helpers.fault_cluster import ClusterFactory, cluster_factory_fixture

SMOLLM_QUANT_ROWS = 4  # a batch of three and a prefill's last-token row read the GGUF blocks


@pytest.fixture(scope="session")
def smollm_f32(smollm_path: Path) -> Engine:
    """The default model in float32, as transformers loads its GGUF: greedy outputs of the
    two must match token for token. How many rows read the GGUF blocks is a speed choice
    measured at start-up, and a busy machine can measure it at 0: fixed here, since the
    tests that use this engine are about its answers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("engine.model.choose.choose_quant_rows", lambda *_: SMOLLM_QUANT_ROWS)
        return Engine(EngineConfig(model=str(smollm_path), dtype="float32"))


@pytest.fixture
def cluster_factory(tmp_path: Path, smollm_path: Path) -> Iterator[ClusterFactory]:
    """Starts fault-test clusters (tests/helpers/fault_cluster.py); stops them after."""
    yield from cluster_factory_fixture(tmp_path, smollm_path)
