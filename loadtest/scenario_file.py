"""Scenario files (TOML or JSON) turned into a `ScenarioConfig`; the CLI's flags go the same way.

    name = "mixed-interference"
    max_duration = 300           # seconds per step
    endpoint = "chat"            # any workload key up here is a default for every workload

    [[workload]]
    name = "long-prompts"
    input_len = 1500
    request_rate = 0.2
    background = true

    [[workload]]
    name = "short-chats"
    concurrency = 4              # a list sweeps: [1, 2, 4]

Workload keys are the `run` command's flags with underscores (`dataset`, `dataset_path`,
`num_prompts`, `input_len`, `output_len`, `range_ratio`, `num_prefixes`, `prefix_len`,
`suffixes_per_prefix`, `turns`, `time_scale`, `concurrency`, `request_rate`, `arrival`,
`burstiness`, `endpoint`, `warmup`, `ignore_eos`, `temperature`, `text_prompts`,
`extra_body`, `goodput = {ttft = MS, tpot = MS, e2el = MS}`, `background`, `seed`). Without
`[[workload]]` tables the top level is the one workload. Unknown keys are errors: a typo
must not run a different test than the one written.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from loadtest.config import (
    DatasetConfig,
    Goodput,
    LoadPoint,
    ScenarioConfig,
    WorkloadConfig,
)

_SCENARIO_KEYS = {"name", "description", "max_duration", "request_timeout", "tokenizer"}
_DATASET_KEYS = {
    "dataset": "name",
    "dataset_path": "path",
    **{
        k: k
        for k in (
            "num_prompts",
            "input_len",
            "output_len",
            "range_ratio",
            "num_prefixes",
            "prefix_len",
            "suffixes_per_prefix",
            "turns",
            "time_scale",
        )
    },
}
_LOAD_KEYS = {"concurrency", "request_rate", "arrival", "burstiness"}
_WORKLOAD_KEYS = {
    "endpoint",
    "warmup",
    "ignore_eos",
    "temperature",
    "text_prompts",
    "extra_body",
    "goodput",
    "background",
    "seed",
}
_ALL_WORKLOAD_KEYS = {"name"} | set(_DATASET_KEYS) | _LOAD_KEYS | _WORKLOAD_KEYS


def builtin_scenarios() -> list[str]:
    folder = resources.files("loadtest") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str | Path | Mapping[str, Any]) -> ScenarioConfig:
    """A built-in scenario by name (`sweep`), a .toml or .json file, or an already-read dict."""
    if isinstance(name_or_path, Mapping):
        return scenario_from_dict(name_or_path)
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in builtin_scenarios():
        path = Path(str(resources.files("loadtest") / "scenarios" / f"{name_or_path}.toml"))
    if not path.exists():
        known = ", ".join(builtin_scenarios())
        raise ValueError(f"no scenario file {str(path)!r} and no built-in of that name ({known})")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return scenario_from_dict(data, default_name=path.stem)


def scenario_from_dict(data: Mapping[str, Any], default_name: str = "scenario") -> ScenarioConfig:
    tables = data.get("workload", [])
    if not isinstance(tables, list):
        raise ValueError("workload must be a list of tables ([[workload]] in TOML)")
    defaults = {k: v for k, v in data.items() if k not in _SCENARIO_KEYS and k != "workload"}
    _check_keys(defaults, _ALL_WORKLOAD_KEYS - {"name"}, "scenario")
    if not tables:
        tables = [{"name": data.get("name", default_name)}]
    workloads = tuple(
        workload_from_dict({**defaults, **table}, f"workload-{i}") for i, table in enumerate(tables)
    )
    extra: dict[str, Any] = {k: data[k] for k in ("description", "tokenizer") if k in data}
    extra |= {k: float(data[k]) for k in ("max_duration", "request_timeout") if k in data}
    return ScenarioConfig(name=str(data.get("name", default_name)), workloads=workloads, **extra)


def workload_from_dict(d: Mapping[str, Any], default_name: str) -> WorkloadConfig:
    _check_keys(d, _ALL_WORKLOAD_KEYS, f"workload {d.get('name', default_name)!r}")
    dataset = DatasetConfig(**{field: d[key] for key, field in _DATASET_KEYS.items() if key in d})
    rest = {k: d[k] for k in _WORKLOAD_KEYS if k in d}
    if "goodput" in rest:
        rest["goodput"] = parse_goodput(rest["goodput"])
    return WorkloadConfig(
        name=str(d.get("name", default_name)), dataset=dataset, loads=_loads(d), **rest
    )


def parse_goodput(spec: Mapping[str, Any] | list[str] | None) -> Goodput:
    """`{"ttft": 500, "tpot": 50}` or the CLI's `["ttft:500", "tpot:50"]`, in milliseconds."""
    if spec is None:
        return Goodput()
    if isinstance(spec, list):
        pairs = [item.split(":", 1) for item in spec]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"goodput takes NAME:MS pairs (ttft:500), got {spec}")
        spec = {k: float(v) for k, v in pairs}
    unknown = set(spec) - {"ttft", "tpot", "e2el"}
    if unknown:
        raise ValueError(f"goodput knows ttft, tpot and e2el, not {sorted(unknown)}")
    return Goodput(**{f"{k}_ms": float(v) for k, v in spec.items()})


def _loads(d: Mapping[str, Any]) -> tuple[LoadPoint, ...]:
    """Every (concurrency, rate) pair of the two lists: a sweep when there is more than one."""
    arrival = d.get("arrival", "poisson")
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival must be poisson or gamma, got {arrival!r}")
    burstiness = float(d.get("burstiness", 1.0))
    if arrival == "poisson" and burstiness != 1.0:
        raise ValueError("burstiness is the gamma shape: use it with arrival = gamma")
    concurrencies = [_concurrency(c) for c in _as_list(d.get("concurrency"))]
    rates = [_rate(r) for r in _as_list(d.get("request_rate", math.inf))]
    return tuple(
        LoadPoint(concurrency=c, request_rate=r, burstiness=burstiness)
        for c, r in itertools.product(concurrencies, rates)
    )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",")]
    return list(value) if isinstance(value, list | tuple) else [value]


def _concurrency(value: Any) -> int | None:
    if value is None or str(value).lower() in ("none", "0", ""):
        return None  # no cap
    return int(value)


def _rate(value: Any) -> float:
    return math.inf if str(value).lower() in ("inf", "infinity") else float(value)


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
