"""`make bench-disagg-scale`: disaggregation at the scale of 16 workers (issue 13).

The mixed workload (short chats streaming beside long prompts) on two mock clusters of 16
workers (`tandem serve --engine mock`), one after the other on this machine:

    disagg     P prefill + D decode workers, P:D the planner's split (split.py), strict
               disaggregation (--no-prefill-balance; see cli.MODES for why)
    colocated  the same P + D = 16 workers, each with both roles, every flag at its default

Figures per mode (bench-results/disagg-scale.json, top-level `disagg` and `colocated`):
the chats' p99 and median inter-token latency and p99 TTFT, their goodput (requests/s
meeting the TTFT and TPOT SLOs), the output tokens/s of everything served, failures, and
the host's busy cores while the load ran (hostload.py). Goal: the chats' p99 ITL
disaggregated <= 0.5x colocated, at >= 0.9x its output throughput.

The workload (workload.py), in the mock's documented time (speed 1):

    chats         32 at a time (closed loop: 2 per worker), 64-token messages (+30 of
                  chat template), 128 output tokens, 416 in all; SLOs TTFT 1 s, TPOT 25 ms
    long prompts  4,096 tokens (+-10%), 16 output tokens, Poisson at 9/s, in the
                  background until the chats are done; the load is bounded at 120 s

Colocated, a long prompt is chunked 1,024 tokens a step (engine.config): that step lasts
~112 ms instead of ~10 ms for every chat decoding on the worker. Disaggregated, the chunks
run on the prefill pool and a chat's steps stay at the decode step.

Time runs 4x slower (`--mock-timing speed=0.25`: every cost of engine.mock's documented
8B-on-a-current-accelerator model, each step 4x as long; workload.dilated divides the
arrival rate and multiplies the SLOs alike). Nothing the comparison is about changes with
a uniform time scale: the same batches, the same chunk interference, the same queues. What
does change is the host's share. 16 mock workers, the router, Ray, Redis and the load
generator share 2 cores, and each streamed token and each prompt token costs them Python
CPU whatever the modelled accelerator does. At speed 1, 16 chats and 6 long prompts/s
kept 2 cores busy (p90 2.0 of 2) and both modes' p99 ITL was 200+ ms of CPU waiting, not
the model; at speed 0.25 this bench's own processes take ~1-1.5 cores. `--mock-timing ''`
runs the documented speed.

Two things the load needs, found by running it:
- Every worker must decode chats. With 4 chats on 16 workers the router's load-aware
  placement kept chats and long prompts on different workers, and colocated p99 ITL was a
  clean ~23 ms: no interference to remove. Hence 2 chats a worker.
- The share of a chat's steps that carry a chunk must clear 1% for p99 to see it: at 7
  long prompts/s it was 0.74% (p99 72 ms, p99.5 448 ms). Hence 9/s (~22% of each
  colocated worker's time in prefill).

    python -m bench.disagg_scale [--out DIR] [--load X] [--set FIELD=VALUE ...]
                                 [--mock-timing SPEC] [--mode disagg|colocated]
                                 [--serve-arg ARG ...]
"""
