"""Load generator and report writer for any OpenAI-compatible endpoint (`vllm bench serve`'s
figures and field names, plus scenarios of several concurrent workloads).

Command line::

    python -m loadtest run --url http://127.0.0.1:8000 --concurrency 1,2,4,8 \\
        --input-len 256 --output-len 64 --num-prompts 64 --goodput ttft:1000 tpot:100 \\
        --label disagg --out bench-results/loadtest
    python -m loadtest run --dataset mooncake --dataset-path trace.jsonl --time-scale 0.5
    python -m loadtest scenario mixed-interference --url URL --label colocated
    python -m loadtest compare OUT/colocated-summary.json OUT/disagg-summary.json

`loadtest.cli.main(argv)` is the same command (`tandem bench` calls it). Every run is
bounded: a number of requests per step, `--max-duration` seconds per step (what is in
flight then is cancelled and counted as `cancelled`, not as failed) and
`--request-timeout` seconds per request.

Python API (what `make bench-disagg` uses)::

    from loadtest import run_scenario

    res = run_scenario("mixed-interference", "http://127.0.0.1:8000",
                       tokenizer="SmolLM2-135M-Instruct.Q4_1.gguf", api_key=None,
                       model=None, out_dir="bench-results/x", label="disagg")
    chats = res.workloads["short-chats"]        # a RunResult (one step, no sweep)
    chats.itl_ms.p99, chats.output_throughput, chats.request_goodput   # ms, tok/s, req/s
    res.overall                                 # every request of the step together
    res.steps[0].server_metrics                 # /metrics deltas (prefix-cache hit rate, ...)
    res.sweep("sweep")                          # a sweep: one RunResult per load point
    chats.to_dict()                             # the JSON written for it

`run_scenario(scenario, url, *, api_key, model, out_dir, label, tokenizer, quiet,
scrape_metrics) -> ScenarioResult`: `scenario` is a built-in name (loadtest/scenarios/:
sweep, mixed-interference, shared-prefix), a .toml/.json path, a dict of the same keys, or
a `ScenarioConfig`; `model=None` takes the first model `/v1/models` lists; `tokenizer`
(a model directory, tokenizer.json or .gguf, or a loaded tokenizer) is needed unless the
scenario names one: loadtest never imports the server's code, so it cannot guess it
(`tandem bench` passes the default model's). `arun_scenario` is the same inside an event
loop. `RunResult` has vLLM's figures as attributes (`completed`, `failed`,
`request_throughput`, `request_goodput` (None without SLOs), `output_throughput`,
`total_token_throughput`, `duration`, ...) and the latencies as `ttft_ms`, `tpot_ms`,
`itl_ms`, `e2el_ms`, each a `Stats(mean, median, std, p90, p99)` in milliseconds;
`error_breakdown` counts failures by category (`http_500`, `timeout`, `connection`,
`stream`, `empty`).

What we chose, and why:

- Prompts for /v1/completions go as token-id lists: lengths and shared prefixes are exact
  because the server does not re-tokenize. The chat endpoint and `--text-prompts` send
  text, trimmed until it re-encodes to no more than the asked length.
- Token counts come from the usage chunk (`stream_options.include_usage`); `ignore_eos`
  with `min_tokens` fixes output lengths (`--no-ignore-eos` for servers without them).
- ITL is per token: a chunk carrying k tokens g seconds after the previous chunk counts as
  k latencies of g/k (loadtest/itl.py says how k is found). TPOT = (E2E - TTFT) / (N - 1).
- A scenario's workloads run at once and are reported apart and together ("overall");
  a `background` workload (say, long prompts) stops when the foreground ones finish, so
  every foreground request ran beside it. Server metrics are for the whole step.
- Each step of a sweep gets fresh prompts (seeded by step), so it does not hit the
  previous step's prefix cache; warm-up requests are sent first and left out.
"""

from loadtest.result import RunResult
from loadtest.scenario import ScenarioResult, StepResult, arun_scenario, run_scenario
from loadtest.scenario_file import load_scenario
from loadtest.stats import Stats

__all__ = [
    "RunResult",
    "ScenarioResult",
    "Stats",
    "StepResult",
    "arun_scenario",
    "load_scenario",
    "run_scenario",
]
