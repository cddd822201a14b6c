"""Fixtures of the Helm chart's tests: the chart, loaded once, and each value set rendered
once per session (rendering is offline and takes milliseconds; the validators are what
cost, so each render is shared by every test that reads it)."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python
import pytest

from tests.helm.manifests import CHART_DIR, VALUE_FILES, Rendered, load_values, render


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


class Releases:
    """Renders of the named value sets (manifests.VALUE_FILES), each made on first use."""

    def __init__(self, chart: helm_python.Chart) -> None:
        self._chart = chart
        self._done: dict[str, Rendered] = {}

    def __getitem__(self, name: str) -> Rendered:
        if name not in self._done:
            values = load_values(VALUE_FILES[name])
            rendered = render(self._chart, values)
            rendered.values = values
            self._done[name] = rendered
        return self._done[name]


@pytest.fixture(scope="session")
def releases(chart: helm_python.Chart) -> Releases:
    return Releases(chart)


@pytest.fixture(scope="session", params=list(VALUE_FILES))
def release(request: pytest.FixtureRequest, releases: Releases) -> Rendered:
    """Each value set in turn."""
    return releases[request.param]
