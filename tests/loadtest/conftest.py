"""Fixtures for the load generator's tests: the real SmolLM2 tokenizer, and a helper that
runs a scenario against a scripted server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.tokenizer import Tokenizer, load_tokenizer
from loadtest.scenario import ScenarioResult, run_scenario


@pytest.fixture(scope="session")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


def run(url: str, tokenizer: Tokenizer, scenario: dict[str, Any], **kw: Any) -> ScenarioResult:
    """A scenario from a dict, quiet, against `url`."""
    return run_scenario(scenario, url, tokenizer=tokenizer, quiet=True, **kw)
