"""What every bench prints and writes at its end: the goals, PASS or FAIL, and the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_goals(title: str, goals: dict[str, dict[str, Any]]) -> None:
    """`goals`: name -> {value, goal, pass}, as each bench's report builds them."""
    print(f"\ngoals ({title}):")
    for name, g in goals.items():
        value = g["value"]
        shown = "-" if value is None else f"{value:.3g}"
        print(f"  {'PASS' if g['pass'] else 'FAIL'}  {name} = {shown} (goal {g['goal']})")


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
