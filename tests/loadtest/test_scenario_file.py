import json
import math
from pathlib import Path

import pytest

from loadtest.config import LoadPoint
from loadtest.scenario_file import builtin_scenarios, load_scenario, scenario_from_dict


def test_builtin_scenarios_load() -> None:
    assert {"sweep", "mixed-interference", "shared-prefix"} <= set(builtin_scenarios())
    sweep = load_scenario("sweep")
    assert [p.concurrency for p in sweep.workloads[0].loads] == [1, 2, 4, 8, 16, 32]
    mixed = load_scenario("mixed-interference")
    assert [w.name for w in mixed.workloads] == ["short-chats", "long-prompts"]
    assert mixed.workloads[1].background and mixed.num_steps == 1
    assert mixed.workloads[0].warmup == 1  # a top-level key is every workload's default


def test_lists_sweep_their_product() -> None:
    cfg = scenario_from_dict({"concurrency": "1,4", "request_rate": [2, "inf"]})
    assert cfg.workloads[0].loads == (
        LoadPoint(1, 2.0),
        LoadPoint(1, math.inf),
        LoadPoint(4, 2.0),
        LoadPoint(4, math.inf),
    )
    assert cfg.num_steps == 4


def test_goodput_and_arrival() -> None:
    cfg = scenario_from_dict(
        {"goodput": ["ttft:500", "tpot:50"], "arrival": "gamma", "burstiness": 0.5}
    )
    w = cfg.workloads[0]
    assert w.goodput.as_dict() == {"ttft": 500.0, "tpot": 50.0}
    assert w.loads[0].burstiness == 0.5


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"concurency": 4}, "unknown key"),
        ({"burstiness": 0.5}, "gamma"),
        ({"goodput": {"itl": 5}}, "goodput"),
        ({"dataset": "nope"}, "dataset"),
        (
            {
                "workload": [
                    {"name": "a", "concurrency": [1, 2]},
                    {"name": "b", "concurrency": [3, 4]},
                ]
            },
            "only one",
        ),
        ({"workload": [{"name": "a"}, {"name": "a"}]}, "differ"),
        ({"workload": [{"name": "a", "background": True}]}, "background"),
        ({"request_rate": 0}, "positive"),
    ],
)
def test_mistakes_are_errors(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scenario_from_dict(bad)


def test_json_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"workload": [{"name": "x", "request_rate": "inf"}]}))
    cfg = load_scenario(path)
    assert cfg.name == "mine" and cfg.workloads[0].name == "x"
    with pytest.raises(ValueError, match="no scenario"):
        load_scenario(tmp_path / "missing.toml")
