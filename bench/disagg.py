"""`make bench-disagg`: the case for disaggregation, measured in one run.

The mixed-interference scenario (loadtest/scenarios/): long prompts arriving while short
chats stream, against a disaggregated cluster (1 prefill + 1 decode worker) and then a
colocated one of the same size (2 workers with both roles), one after the other on the
same machine. Reported per mode: the chats' p99 inter-token latency and goodput, and the
output throughput of everything served. Writes bench-results/disagg.json.

    python -m bench.disagg [--scenario mixed-interference] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from services.cluster.launch import start_serve

MODES: dict[str, list[str]] = {
    # strict disaggregation: no prompt prefills on a decode worker because of a queue
    "disagg": ["--mode=disagg", "--no-prefill-balance"],
    "colocated": ["--mode=colocated"],
}
FOREGROUND = "short-chats"


def run_mode(mode: str, scenario: str, out: Path, extra: list[str]) -> dict[str, Any]:
    from loadtest import run_scenario
    from services.cluster.models import pull_default  # loadtest needs the model's tokenizer

    out.mkdir(parents=True, exist_ok=True)
    served = start_serve(out / f"{mode}-serve.log", "--no-dashboard", *MODES[mode], *extra)
    try:
        tok = pull_default()
        res = run_scenario(scenario, served.url, tokenizer=tok, out_dir=out / mode, label=mode)
    finally:
        served.proc.stop()
    chats = res.workloads[FOREGROUND]
    return {
        "itl_p99_ms": chats.itl_ms.p99,
        "itl_median_ms": chats.itl_ms.median,
        "ttft_p99_ms": chats.ttft_ms.p99,
        "goodput_req_s": chats.request_goodput,
        "output_tok_s": res.overall.output_throughput,
        "failed": res.overall.failed,
        "server_metrics": res.steps[0].server_metrics,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="mixed-interference")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--serve-arg", action="append", default=[], help="passed to tandem serve")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {
        mode: run_mode(mode, args.scenario, out / "disagg-runs", args.serve_arg) for mode in MODES
    }
    d, c = rows["disagg"], rows["colocated"]
    print(
        f"{'mode':>10} {'ITL p99 ms':>11} {'ITL p50 ms':>11} {'out tok/s':>10} "
        f"{'goodput req/s':>14}"
    )
    for mode, r in rows.items():
        print(
            f"{mode:>10} {r['itl_p99_ms']:>11.1f} {r['itl_median_ms']:>11.1f} "
            f"{r['output_tok_s']:>10.2f} {r['goodput_req_s'] or 0:>14.3f}"
        )
    ratio = d["itl_p99_ms"] / c["itl_p99_ms"]
    print(
        f"disagg / colocated p99 ITL: {ratio:.2f}x (goal: <= 0.5x at equal throughput); "
        f"throughput {d['output_tok_s'] / c['output_tok_s']:.2f}x"
    )
    result = {**rows, "itl_p99_ratio": ratio, "scenario": args.scenario}
    path = out / "disagg.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
