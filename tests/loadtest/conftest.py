"""Fixtures for the load generator's tests: the real SmolLM2 tokenizer, and a helper that
runs a scenario against a scripted server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.scenario import ScenarioResult, run_scenario
from loadtest.tokenizer import HFTokenizer, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(smollm_path: Path) -> HFTokenizer:
    return load_tokenizer(smollm_path)


def run(url: str, tokenizer: HFTokenizer, scenario: dict[str, Any], **kw: Any) -> ScenarioResult:
    """A scenario from a dict, quiet, against `url`."""
    return run_scenario(scenario, url, tokenizer=tokenizer, quiet=True, **kw)
