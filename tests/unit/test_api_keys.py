"""Where the router's API keys come from, and what a per-key limit needs
(services/router/api_keys.py). The limit itself is served in
tests/integration/test_router_http.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.router.api_keys import ApiKeys, gather_keys
from services.router.options import add_router_args, router_options


def _options(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: str | None = None) -> ApiKeys:
    if env is None:
        monkeypatch.delenv("TANDEM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("TANDEM_API_KEY", env)
    ap = argparse.ArgumentParser()
    add_router_args(ap)
    return router_options(ap.parse_args(argv), "m", "redis://127.0.0.1:1").api_keys


def test_keys_from_flags_environment_and_file_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "keys"
    file.write_text("# team keys\nsk-c\n\n  sk-d  \nsk-a\n")
    argv = ["--api-key", "sk-a", "--api-key", "sk-b", "--api-keys-file", str(file)]
    keys = _options([*argv, "--max-requests-per-key", "3"], monkeypatch, env="sk-b, sk-e,")
    assert keys.keys == ("sk-a", "sk-b", "sk-e", "sk-c", "sk-d")
    assert keys.max_requests_per_key == 3
    assert "sk-" not in repr(keys)  # never in a log line that prints the options


def test_no_key_anywhere_means_an_open_router(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _options([], monkeypatch) == ApiKeys()
    assert gather_keys(None, "", None) == ()


def test_a_limit_without_keys_or_below_one_and_a_missing_file_stop_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit, match="needs API keys"):
        _options(["--max-requests-per-key", "2"], monkeypatch)
    with pytest.raises(SystemExit, match="at least 1"):
        _options(["--max-requests-per-key", "0"], monkeypatch, env="sk-a")
    with pytest.raises(SystemExit, match="No such file"):
        _options(["--api-keys-file", str(tmp_path / "absent")], monkeypatch)


def test_a_key_is_matched_whole_and_by_its_index() -> None:
    keys = ApiKeys(("sk-a", "sk-b"))
    assert keys.match(b"sk-b") == 1 and keys.match(b"sk-a") == 0
    assert keys.match(b"sk-") is None and keys.match(b"sk-bb") is None and keys.match(b"") is None


def test_metrics_need_the_key_unless_public_metrics_is_asked_for() -> None:
    ap = argparse.ArgumentParser()
    add_router_args(ap)
    for argv, public in (([], False), (["--public-metrics"], True)):
        opts = router_options(ap.parse_args(["--api-key", "sk-a", *argv]), "m", "redis://x:1")
        assert opts.public_metrics is public
