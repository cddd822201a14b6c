"""Whether the decode worker prefills a prompt itself, and why (the route a request is
counted under in `tandem_requests_total`), instead of a prefill worker:

- the prompt's uncached part is at most `local_prefill_tokens`: cheaper to compute than
  to move (`local_prefill`);
- the prefill pool has no worker, scaled to zero (`local_prefill_no_pool`);
- with `balance_prefill`, the decode worker would start it sooner than the prefill pool
  (its queued prefill tokens plus this prompt's are fewer than the shortest prefill
  worker's queue), so a burst of prompts keeps both pools computing instead of queueing
  on one (`local_prefill_queue`);
- its prompt's own logprobs were asked for (completions' echo): they come with the first
  token of the Decode stream, from a prompt computed whole (`local_prefill_prompt_logprobs`).
"""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from services.router.backend import (
    ROUTE_LOCAL,
    ROUTE_LOCAL_NO_POOL,
    ROUTE_LOCAL_PROMPT_LOGPROBS,
    ROUTE_LOCAL_QUEUE,
    GenerateRequest,
)
from services.router.cluster_view import ClusterView
from services.router.dispatch_config import DispatchConfig
from services.router.routing import Choice


def always_local(prompt_tokens: int, params: SamplingParams, config: DispatchConfig) -> bool:
    """Whether the serving worker prefills this prompt whatever the prefill pool's state:
    colocated, a prompt no longer than `local_prefill_tokens`, or one whose logprobs were
    asked for. Known when the request arrives (before routing: a cache hit can make a
    longer prompt local too), and counted with its arrival (arrivals.py), so that the
    autoscaler does not keep a prefill worker for prompt work it would never get."""
    return (
        config.mode == "colocated"
        or prompt_tokens <= config.local_prefill_tokens
        or params.prompt_logprobs is not None
    )


def local_route(
    request: GenerateRequest, decode: Choice, cluster: ClusterView, config: DispatchConfig
) -> str | None:
    """Why `decode` prefills this prompt itself, or None to prefill remotely."""
    if request.params.prompt_logprobs is not None:
        return ROUTE_LOCAL_PROMPT_LOGPROBS
    if decode.uncached <= config.local_prefill_tokens:
        return ROUTE_LOCAL
    if not cluster.has_pool("prefill"):  # scaled to zero: a route, not a failure
        return ROUTE_LOCAL_NO_POOL
    if not config.balance_prefill:
        return None
    # the shortest queue of the prefill workers it can read from (read only: picking
    # would take a turn)
    shortest = min((w.queued_tokens for w in cluster.prefill_for(decode.worker)), default=None)
    if shortest is None:  # none usable: the dispatcher falls back, logged and counted
        return None
    sooner = decode.worker.queued_tokens + decode.uncached < shortest
    return ROUTE_LOCAL_QUEUE if sooner else None
