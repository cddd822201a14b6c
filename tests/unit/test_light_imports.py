"""`import engine` and the parts the router and the CLI use for text load no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["engine", "engine.tokenizer", "engine.detokenize"])
def test_no_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_lazy_exports_resolve() -> None:
    import engine
    from engine.engine import Engine

    assert engine.Engine is Engine and engine.FinishReason.STOP == "stop"
    with pytest.raises(AttributeError):
        _ = engine.NotAThing  # type: ignore[attr-defined]
