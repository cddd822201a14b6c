"""Rows, goals and the printed table of `make bench-serve` (pure: no servers, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SYSTEMS = ("vllm", "tandem-default", "tandem-recommended")
METRICS = ("output_tok_s", "ttft_mean_ms", "tpot_mean_ms", "itl_p99_ms")


def row(system: str, concurrency: int, result: Any) -> dict[str, Any]:
    """One system at one concurrency from a loadtest RunResult. With nothing completed (all
    failed, or cancelled at the time bound) the figures are None, not loadtest's zeros."""
    done = result.completed > 0
    return {
        "system": system,
        "concurrency": concurrency,
        "output_tok_s": result.output_throughput if done else None,
        "ttft_mean_ms": result.ttft_ms.mean if done else None,
        "tpot_mean_ms": result.tpot_ms.mean if done else None,
        "itl_p99_ms": result.itl_ms.p99 if done else None,
        "completed": result.completed,
        "failed": result.failed,
        "cancelled": result.cancelled,
    }


def failed_row(system: str, concurrency: int, planned: int, error: str) -> dict[str, Any]:
    """A level that never ran (the server did not build or start): every request failed."""
    return {
        "system": system,
        "concurrency": concurrency,
        **dict.fromkeys(METRICS),
        "completed": 0,
        "failed": planned,
        "cancelled": 0,
        "error": error,
    }


def combine(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system and concurrency from several rounds of the whole run: each figure
    the median of the rounds that have it (None where none has), the request counts summed.
    Rounds alternate the systems' order, so a machine that slows down over the run weighs
    on each system alike, and the median keeps one noisy round from deciding a goal."""
    keys = sorted({(r["system"], r["concurrency"]) for rows in rounds for r in rows})
    out = []
    for key in keys:
        system, c = key
        same = [r for rows in rounds for r in rows if (r["system"], r["concurrency"]) == key]
        combined: dict[str, Any] = {"system": system, "concurrency": c}
        for m in METRICS:
            values = sorted(float(r[m]) for r in same if r.get(m) is not None)
            combined[m] = _median(values) if values else None
        for n in ("completed", "failed", "cancelled"):
            combined[n] = sum(int(r[n]) for r in same)
        errors = [r["error"] for r in same if r.get("error")]
        if errors:
            combined["error"] = "; ".join(errors)
        out.append(combined)
    return out


def _median(values: list[float]) -> float:
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _get(rows: list[dict[str, Any]], system: str, c: int, key: str) -> float | None:
    for r in rows:
        if r["system"] == system and r["concurrency"] == c:
            value = r.get(key)
            return float(value) if value is not None else None
    return None


def ratio(rows: list[dict[str, Any]], system: str, c: int, key: str) -> float | None:
    """`system`'s figure over vLLM's at the same concurrency; None when either is missing."""
    ours, theirs = _get(rows, system, c, key), _get(rows, "vllm", c, key)
    return ours / theirs if ours is not None and theirs else None


@dataclass(frozen=True, slots=True)
class Goal:
    system: str
    concurrency: int
    metric: str
    op: str  # ">=": higher is better; "<=": lower is better
    target: float  # x vLLM's figure
    ratio: float | None  # None: not measured (a side failed)

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target

    def line(self) -> str:
        got = "n/a" if self.ratio is None else f"{self.ratio:.2f}x"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return (
            f"{self.system} {self.metric} at {self.concurrency}: {got} vLLM's "
            f"(goal {self.op} {self.target}x): {verdict}"
        )


GOALS = (  # issue 11
    ("tandem-recommended", 16, "output_tok_s", ">=", 1.1),
    ("tandem-recommended", 32, "output_tok_s", ">=", 1.1),
    ("tandem-recommended", 1, "tpot_mean_ms", "<=", 1.05),
    ("tandem-recommended", 16, "ttft_mean_ms", "<=", 1.0),
    ("tandem-default", 16, "output_tok_s", ">=", 0.8),
    ("tandem-default", 32, "output_tok_s", ">=", 0.8),
)


def check_goals(rows: list[dict[str, Any]]) -> list[Goal]:
    return [Goal(s, c, m, op, t, ratio(rows, s, c, m)) for s, c, m, op, t in GOALS]


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], roofline: dict[str, float]) -> str:
    """One line per row: the figures, tok/s over vLLM's and over the GEMM-only bound."""
    head = (
        f"{'system':<19}{'conc':>5}{'tok/s':>9}{'/vLLM':>7}{'/bound':>8}{'TTFT ms':>9}"
        f"{'/vLLM':>7}{'TPOT ms':>9}{'/vLLM':>7}{'ITL p99':>9}{'failed':>7}{'cancel':>7}"
    )
    lines = [head]
    for r in sorted(rows, key=lambda r: (SYSTEMS.index(r["system"]), r["concurrency"])):
        s, c = r["system"], r["concurrency"]
        bound = roofline.get(str(c))
        tok = r["output_tok_s"]
        lines.append(
            f"{s:<19}{c:>5}{_fmt(tok):>9}{_fmt(ratio(rows, s, c, 'output_tok_s'), '.2f'):>7}"
            f"{_fmt(tok / bound if tok is not None and bound else None, '.2f'):>8}"
            f"{_fmt(r['ttft_mean_ms']):>9}{_fmt(ratio(rows, s, c, 'ttft_mean_ms'), '.2f'):>7}"
            f"{_fmt(r['tpot_mean_ms']):>9}{_fmt(ratio(rows, s, c, 'tpot_mean_ms'), '.2f'):>7}"
            f"{_fmt(r['itl_p99_ms']):>9}{r['failed']:>7}{r.get('cancelled', 0):>7}"
        )
        if r.get("error"):
            lines.append(f"{'':<19}error: {r['error'].strip().splitlines()[-1][:200]}")
    bounds = ", ".join(f"{c}: {v:.1f}" for c, v in roofline.items())
    lines.append(f"GEMM-only bound, output tok/s by concurrency: {bounds}")
    return "\n".join(lines)
