"""`make bench-serve`: Tandem beside vLLM's CPU build on the same machine, in one run.

vLLM (its own venv, built once in .bench-venvs/), `tandem serve` with default flags and
Tandem's recommended single-node configuration, each started, driven with the same prompts
(random ~256-token prompts with unique prefixes, exactly 64 output tokens, streamed through
/v1/completions) at concurrency 1, 16 and 32, and stopped; the machine's GEMM-only bound
for the workload measured first. With `--rounds N` the whole run is repeated N times, the
systems' order reversed each round, and every figure is the median over the rounds. Writes
bench-results/serve.json.

    python -m bench.serve [--levels 1:8,16:64,32:96] [--max-duration 300] [--systems ...]
                          [--rounds 1]
"""
