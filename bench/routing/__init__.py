"""`make bench-routing`: KV-aware routing against least-loaded and round-robin, in one run.

Two workloads, each run once per routing mode on a fresh cluster (empty caches) of the
same spec, one mode after another: 8 mock prefill and 2 mock decode workers
(`tandem serve --engine mock`), every prompt prefilled on the prefill pool
(`--local-prefill-tokens 0`), requests at a fixed, seeded arrival rate.

    chat      8 system prompts of 900-1,100 tokens, Zipf-popular (1/rank); 180 users, each
              a conversation of 2-6 turns: turn k+1 = turn k + reply + a new message of
              50-250 tokens, so it extends turn k token for token (the replies are 100-300
              synthetic tokens fixed per conversation, not the generated ones: a prefill
              worker never sees those). A turn goes an exponential think time (mean 3 s)
              after the previous answer ended; conversations start as a Poisson process at
              1/s, so requests arrive at ~4/s. 16 output tokens.
    mooncake  a synthetic Mooncake trace (loadtest.datasets.mooncake_synth): 360 requests
              at 1.6/s (Poisson), 48 shared prefixes of 2-6 blocks of 512 tokens picked by
              Zipf popularity, 1-3 private blocks each, a quarter of them a follow-up that
              extends a recent request; 8-24 output tokens; replayed by timestamp through
              loadtest's mooncake dataset (512 token ids per hash id).

Prompts go to /v1/completions as token ids, streaming, ignore_eos: the router hashes
exactly what was generated. Figures per workload and mode (bench-results/routing.json):

    hit_rate         the router's cached / prompt tokens over the run (prefill workers' hits)
    oracle_hit_rate  per workload: one unbounded cache shared by all workers, in arrival
                     order, capped like the engine (oracle.py): no routing does better
    pooled_lru_hit_rate   the same with only the pool's memory (8 x 4,096 blocks), LRU
    ttft_mean_ms, ttft_p99_ms   at the client (loadtest's client), queueing included
    max_load_ratio   prompts routed to the busiest prefill worker over the mean of all 8
                     (tandem_routed_requests_total{pool="prefill"}); 1.0 is perfectly even
    prefill_busy     modelled share of the prefill pool's time spent on uncached tokens
    index_hit_rate   the hit rate the router's KV index promised when it routed

Goals (kv): hit rate >= 90% of the oracle's; mean TTFT <= half of round-robin's; max load
ratio <= 1.5; no failures. The real-model comparison (2 prefill + 1 decode workers,
SmolLM2 on CPU, a smaller chat workload; `--no-real` skips it) reports the same fields.

Timing, memory and load, and why:

- engine.mock's default prefill (0.1 ms a token, 10k tokens/s a worker) would need 50-100
  requests/s to load 8 workers; 2 CPU cores cannot route that many (with prefill nearly
  free, TTFT at 10 requests/s is already 77 ms mean, 310 ms p99: our Python, not where
  prompts went). So prefill is modelled 20x slower (`--mock-timing
  prefill_ms_per_token=2.0`: 500 tokens/s a worker, 4k for the pool) and the rates are
  set against that; decode keeps the default timing (it is not on the TTFT path, and a
  slow decode would only hold prefill workers' leased blocks longer). The router's
  wall-clock constants (heartbeats, its 2 s prediction of blocks in flight) see prefills
  20x longer than the mock's defaults would make them.
- 4,096 KV blocks of 16 tokens a worker (engine.mock's default, 64k tokens): no worker
  holds a whole workload (255k and 550k distinct tokens), and under round-robin no worker
  keeps every hot prefix; the pool's memory used as one LRU cache reaches the oracle on
  both, so the distance from kv to the oracle is routing, not memory.
- At these rates round-robin's prefill pool is ~55-62% busy and kv's ~30-45%: loaded but
  stable for every mode. Near kv's own limit round-robin would be past saturation and its
  TTFT would grow with the length of the run. Lower rates bring kv's hit rate closer to
  the oracle's (it trades fewer hits for balance) and the TTFT ratio towards the ratio
  of uncached tokens; higher rates do the opposite. `--load X` scales every rate.

    python -m bench.routing [--quick] [--no-real] [--only-index] [--load X]
                                     [--mode kv ...] [--workload chat ...] [--out DIR]
"""
