"""Running a scenario, the Python API: `run_scenario(...) -> ScenarioResult`.

    load the scenario and the tokenizer -> ask the server its model -> warm up
    -> for each step: scrape /metrics, drive every workload, scrape again, figures
    -> write the files (report.py)

The steps themselves are in steps.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest import report
from loadtest.client import make_http
from loadtest.config import ScenarioConfig, Target
from loadtest.datasets import TokenizerLike
from loadtest.result import RunResult
from loadtest.scenario_file import load_scenario
from loadtest.steps import StepResult, StepRunner
from loadtest.tokenizer import load_tokenizer

__all__ = ["ScenarioResult", "StepResult", "arun_scenario", "run_scenario"]


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    label: str
    steps: tuple[StepResult, ...]
    files: tuple[Path, ...] = field(default=())  # what was written, when out_dir was given

    @property
    def workloads(self) -> dict[str, RunResult]:
        """Each workload's result, for a scenario of one step (no sweep)."""
        if len(self.steps) != 1:
            raise ValueError(f"{self.name} has {len(self.steps)} steps: use .steps or .sweep()")
        return self.steps[0].workloads

    @property
    def overall(self) -> RunResult:
        """Every request of a one-step scenario together."""
        if len(self.steps) != 1:
            raise ValueError(f"{self.name} has {len(self.steps)} steps: use .steps")
        return self.steps[0].overall

    def sweep(self, workload: str | None = None) -> list[RunResult]:
        """One workload's result at every step (default: the first workload)."""
        name = workload or next(iter(self.steps[0].workloads))
        return [s.workloads[name] for s in self.steps]


def run_scenario(
    scenario: ScenarioConfig | str | Path | Mapping[str, Any],
    url: str,
    *,
    api_key: str | None = None,
    model: str | None = None,
    out_dir: str | Path | None = None,
    label: str | None = None,
    tokenizer: TokenizerLike | str | Path | None = None,
    quiet: bool = True,
    scrape_metrics: bool = True,
) -> ScenarioResult:
    """Run a scenario (a built-in name, a .toml/.json file, a dict or a ScenarioConfig)
    against the server at `url`; write its files into `out_dir` when given."""
    target = Target(url=url, api_key=api_key, model=model)
    return asyncio.run(
        arun_scenario(
            scenario,
            target,
            out_dir=out_dir,
            label=label,
            tokenizer=tokenizer,
            quiet=quiet,
            scrape_metrics=scrape_metrics,
        )
    )


async def arun_scenario(
    scenario: ScenarioConfig | str | Path | Mapping[str, Any],
    target: Target,
    *,
    out_dir: str | Path | None = None,
    label: str | None = None,
    tokenizer: TokenizerLike | str | Path | None = None,
    quiet: bool = True,
    scrape_metrics: bool = True,
) -> ScenarioResult:
    """`run_scenario` inside a running event loop."""
    cfg = scenario if isinstance(scenario, ScenarioConfig) else load_scenario(scenario)
    tok, tok_id = _tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer)
    label = label or cfg.name
    async with make_http(cfg.request_timeout) as http:
        model = target.model or await _first_model(http, target)
        await _check_tokenizer(http, target, model, tok, tok_id)
        run = StepRunner(cfg, target, model, tok, tok_id, label, http, quiet)
        await run.start(scrape_metrics)
        await run.warm_up()
        steps = [await run.step(k) for k in range(cfg.num_steps)]
    result = ScenarioResult(cfg.name, label, tuple(steps))
    if out_dir is not None:
        files = report.write_all(Path(out_dir), result)
        result = ScenarioResult(cfg.name, label, tuple(steps), tuple(files))
    return result


def _tokenizer(spec: TokenizerLike | str | Path | None) -> tuple[TokenizerLike, str]:
    if spec is not None and not isinstance(spec, str | Path):
        return spec, type(spec).__name__
    if spec is None:
        raise ValueError(
            "no tokenizer: pass --tokenizer (a model directory, tokenizer.json or .gguf); "
            "`tandem bench` passes the default model's"
        )
    return load_tokenizer(spec), str(Path(spec))


async def _first_model(http: httpx.AsyncClient, target: Target) -> str:
    """The first model the server lists; ValueError when it lists none (pass --model)."""
    try:
        r = await http.get(target.base + "/v1/models", headers=target.headers(), timeout=10.0)
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{target.base}/v1/models names no model ({e!r}); pass --model") from None


# Words, digits, punctuation, accents and an emoji: two different tokenizers rarely agree.
PROBE = "Tandem's load test: 12,345 naïve cafés -> done ☕."


async def _check_tokenizer(
    http: httpx.AsyncClient, target: Target, model: str, tok: TokenizerLike, tok_id: str
) -> None:
    """Warn when the server's /tokenize (vLLM's and Tandem's) splits a probe text otherwise
    than our tokenizer: prompt lengths would be off. A server without it is taken on trust."""
    body = {"model": model, "prompt": PROBE, "add_special_tokens": False}
    try:
        url, headers = target.base + "/tokenize", target.headers()
        r = await http.post(url, json=body, headers=headers, timeout=10.0)
        theirs = r.json()["tokens"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return
    if theirs is not None and list(theirs) != tok.encode(PROBE):
        print(
            f"warning: {target.base} tokenizes otherwise than {tok_id}: prompt lengths will "
            "be off (pass the server's tokenizer with --tokenizer)",
            file=sys.stderr,
        )
