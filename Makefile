# Two commands do all the set-up: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Pinned so pip takes the local CPU build; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.stamp-install
PROMPT ?= What is the capital of France?

.PHONY: install redis-server test lint typecheck run generate pull proto bench-engine bench-profile bench-transfer bench-disagg bench-disagg-scale bench-autoscale bench-routing bench-router bench-grammar bench-moe bench-cuda-graph bench-serve soak tcmalloc clean

install: $(STAMP) redis-server

# Redis is a system package: installed with apt-get where we are root, else we say what to do.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q redis-server; \
	  else \
	    echo "error: redis-server is missing; install it (e.g. sudo apt-get install redis-server)" >&2; \
	    exit 1; \
	  fi; }

# Idempotent: re-runs only when the dependency list changes or the venv is missing.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check engine services loadtest bench tests
	$(VENV)/bin/ruff format --check engine services loadtest bench tests
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test: install lint typecheck
	$(VENV)/bin/pytest -q

# The wire contract: proto/*.proto -> services/pb/ (committed; tests check it is fresh).
proto: install
	$(PY) -m services.pb.generate services/pb

pull: install
	$(VENV)/bin/tandem models pull

# A whole local cluster: Ray, Redis, one prefill and one decode worker, the router on
# 127.0.0.1:8000. Extra flags go through ARGS, e.g. `make run ARGS="--mode colocated"`.
run: pull
	$(VENV)/bin/tandem serve $(ARGS)

# One prompt through the engine in this process, no cluster.
generate: pull
	$(VENV)/bin/tandem generate --prompt "$(PROMPT)"

bench-engine: pull
	$(PY) -m bench.engine

# Where a forward pass's time goes (GEMMs, attention, elementwise, overhead), torch's
# reference elementwise ops against our fused ones: bench-results/profile.json.
bench-profile: pull
	$(PY) -m bench.profile_step $(ARGS)

bench-transfer: install
	$(PY) -m bench.transfer

# Disaggregated vs colocated on the mixed workload (two clusters, one after the other).
bench-disagg: pull
	$(PY) -m bench.disagg

# Disaggregated (the autoscaler's P:D split) vs colocated on 16 mock workers, the mixed
# workload, mock timing 4x slowed so 2 cores keep up (~6 min): bench-results/disagg-scale.json.
bench-disagg-scale: pull
	$(PY) -m bench.disagg_scale $(ARGS)

# The autoscaler on a ramp (up, plateau, prefill-heavy, decode-heavy, down) of mock workers,
# against static clusters of its bounds' min and max (~12 min): bench-results/autoscale.json.
bench-autoscale: pull
	$(PY) -m bench.autoscale $(ARGS)

# kv vs least-loaded vs round-robin routing: a shared-prefix chat and a Mooncake-style trace
# on 8 mock prefill workers, then the real model on 2 (ARGS="--no-real" skips that part).
bench-routing: pull
	$(PY) -m bench.routing $(ARGS)

# Structured output's cost a token: llguidance (the engine's) and xgrammar where importable.
bench-grammar: pull
	$(PY) -m bench.grammar_mask $(ARGS)

# A small random MoE model: grouped experts against a per-token loop and transformers.
bench-moe: install
	$(PY) -m bench.moe $(ARGS)

# On a GPU (CUDA + flashinfer): the decode step from CUDA graphs against the same engine
# run eagerly and transformers, a SmolLM2-shaped model: bench-results/cuda_graph.json.
bench-cuda-graph: install
	$(PY) -m bench.cuda_graph $(ARGS)

# The request path alone: router + one mock worker with zero step time, concurrency 1, 16
# and 64; TTFT, req/s and each process's CPU per request.
bench-router: install
	$(PY) -m bench.router $(ARGS)

# Minutes of saturation on mock workers, one killed (kill -9) and restarted every N seconds:
# completed vs failed requests, 429s, the router's retries and each process's memory at start
# and end, in bench-results/soak.json. Not in `make test`. ARGS, e.g. "--duration-s 60".
soak: install
	$(PY) -m bench.soak $(ARGS)

# vLLM's CPU build beside `tandem serve` (default flags and the recommended single node) on
# the same prompts, with the machine's GEMM-only bound: bench-results/serve.json. vLLM's venv
# and its copy of the model are built once in .bench-venvs/. ARGS, e.g. "--max-duration 120".
bench-serve: pull tcmalloc
	$(PY) -m bench.serve $(ARGS)

# vLLM's CPU guide preloads tcmalloc: a system package, installed like redis-server.
tcmalloc:
	@ldconfig -p | grep -q libtcmalloc_minimal.so.4 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q libtcmalloc-minimal4; \
	  else \
	    echo "error: tcmalloc is missing; install it (e.g. sudo apt-get install libtcmalloc-minimal4)" >&2; \
	    exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) bench-results .pytest_cache .mypy_cache .ruff_cache
