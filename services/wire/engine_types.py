"""The engine's own types that ride inside rpc messages: SamplingParams, KVHandle, and a
finish reason as the wire's string. A handle's lease deadline is on its process's monotonic
clock: the wire carries the time left, never a wall-clock time."""

from __future__ import annotations

import time

from engine.request import StartTiming, TopLogprobs
from engine.sampling_params import GuidedSpec, SamplingParams
from engine.transfer.exchange import KVHandle
from services.pb import worker_pb2


def params_to_pb(p: SamplingParams) -> worker_pb2.SamplingParams:
    msg = worker_pb2.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        logprobs=p.logprobs,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logit_bias=dict(p.logit_bias),
        min_p=p.min_p,
        top_logprobs=p.top_logprobs,
    )
    if p.seed is not None:
        msg.seed = p.seed
    if p.repetition_penalty != 1.0:
        msg.repetition_penalty = p.repetition_penalty
    if p.guided is not None:
        msg.guided.kind, msg.guided.spec = p.guided.kind, p.guided.spec
        msg.guided.after_token_ids.extend(p.guided.after)
    if p.prompt_logprobs is not None:
        msg.prompt_logprobs = p.prompt_logprobs
    return msg


def params_from_pb(msg: worker_pb2.SamplingParams) -> SamplingParams:
    """Raises ValueError (a gRPC INVALID_ARGUMENT at the server edge) for bad values."""
    return SamplingParams(
        max_tokens=msg.max_tokens,
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
        logprobs=msg.logprobs,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=(msg.repetition_penalty if msg.HasField("repetition_penalty") else 1.0),
        logit_bias=tuple(msg.logit_bias.items()),
        min_p=msg.min_p,
        top_logprobs=msg.top_logprobs,
        guided=_guided_from_pb(msg.guided) if msg.HasField("guided") else None,
        prompt_logprobs=msg.prompt_logprobs if msg.HasField("prompt_logprobs") else None,
    )


def _guided_from_pb(msg: worker_pb2.GuidedSpec) -> GuidedSpec:
    return GuidedSpec(msg.kind, msg.spec, tuple(msg.after_token_ids))


def start_to_pb(start: StartTiming) -> worker_pb2.StartTiming:
    return worker_pb2.StartTiming(
        queue_seconds=start.queue_s,
        kv_wait_seconds=start.kv_wait_s,
        compute_seconds=start.compute_s,
    )


def start_from_pb(msg: worker_pb2.StartTiming) -> StartTiming:
    return StartTiming(msg.queue_seconds, msg.kv_wait_seconds, msg.compute_seconds)


def top_to_pb(top: TopLogprobs) -> worker_pb2.TopLogprobs:
    return worker_pb2.TopLogprobs(token_ids=[t for t, _ in top], logprobs=[lp for _, lp in top])


def top_from_pb(msg: worker_pb2.TopLogprobs) -> TopLogprobs:
    return tuple(zip(msg.token_ids, msg.logprobs, strict=True))


def handle_to_pb(h: KVHandle) -> worker_pb2.KVHandle:
    return worker_pb2.KVHandle(
        worker_id=h.worker_id,
        nixl_agent=h.agent_name,
        block_ids=list(h.block_ids),
        num_tokens=h.num_tokens,
        lease_id=h.lease_id,
        lease_ms_left=min(max(0, int((h.lease_deadline - time.monotonic()) * 1000)), 2**32 - 1),
    )


def handle_from_pb(msg: worker_pb2.KVHandle, since: float | None = None) -> KVHandle:
    """`since`: when the time left started counting at the latest, on our monotonic clock
    (when the call that brought the handle began); by default, now."""
    if not msg.nixl_agent or not msg.lease_id:
        raise ValueError("a KV handle needs a NIXL agent name and a lease id")
    return KVHandle(
        worker_id=msg.worker_id,
        agent_name=msg.nixl_agent,
        block_ids=tuple(msg.block_ids),
        num_tokens=msg.num_tokens,
        lease_id=msg.lease_id,
        lease_deadline=(time.monotonic() if since is None else since) + msg.lease_ms_left / 1000,
    )


def reason_to_pb(finish_reason: str | None) -> str:
    """A finish reason (a str, or engine's FinishReason, a StrEnum) as the wire's string:
    empty while the request goes on."""
    return str(finish_reason) if finish_reason else ""


def reason_from_pb(reason: str) -> str | None:
    return reason or None
