"""The scheduler driven by hand: a real BlockPool, no model. `update()` is fed made-up
tokens, the stop rule the engine would apply is applied here, and every step ends with
the pool's integrity check."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from engine.block_pool import BlockPool
from engine.kv_events import KVEvent
from engine.request import FinishReason, Request, SampledToken
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput

BS = 4

StopRule = Callable[[Request], FinishReason | None]


def make(
    num_blocks: int = 64,
    *,
    budget: int = 16,
    max_seqs: int = 8,
    role: str = "both",
    chunked: bool = True,
    prefix: bool = True,
    events: list[KVEvent] | None = None,
) -> Scheduler:
    pool = BlockPool(num_blocks, on_event=events.append if events is not None else None)
    return Scheduler(
        pool,
        BS,
        max_seqs,
        budget,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=prefix,
        role=role,
    )


def mkreq(
    rid: str, prompt: list[int], max_tokens: int = 4, remote: bool = False, salt: str = ""
) -> Request:
    return Request(
        rid,
        list(prompt),
        SamplingParams(max_tokens=max_tokens),
        arrival_time=0.0,
        remote_prefill=remote,
        cache_salt=salt,
    )


def stop_at_max(req: Request) -> FinishReason | None:
    return FinishReason.LENGTH if req.num_output_tokens >= req.params.max_tokens else None


def next_token(req: Request) -> int:
    """A made-up sample that never collides with the small prompt ids used here."""
    return 10_000 + req.num_tokens


def update(
    sched: Scheduler,
    out: SchedulerOutput,
    sampled: Mapping[str, SampledToken],
    is_stop: StopRule = stop_at_max,
) -> list[Request]:
    """`update()`, then what the engine does next: finish the requests whose new token
    stops them. Returns the requests that got a token."""
    got = sched.update(out, sampled)
    for req in got:
        reason = is_stop(req)
        if reason is not None:
            sched.finish(req, reason)
    return got


def step(sched: Scheduler, is_stop: StopRule = stop_at_max) -> SchedulerOutput:
    out = sched.schedule()
    assert out.num_tokens <= sched.max_num_batched_tokens
    sampled = {
        c.request.request_id: SampledToken(next_token(c.request)) for c in out.chunks if c.samples
    }
    update(sched, out, sampled, is_stop)
    sched.pool.check_integrity()
    return out


def shape(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(c.request.request_id, c.start, c.num_tokens, c.samples) for c in out.chunks]


def drain(sched: Scheduler, max_steps: int = 200) -> int:
    steps = 0
    while sched.has_unfinished():
        step(sched)
        steps += 1
        assert steps <= max_steps, "scheduler made no progress"
    return steps


def assert_done(sched: Scheduler) -> None:
    assert not sched.has_unfinished()
    assert not sched.running and not sched.waiting and not sched.remote and not sched.held
    sched.pool.check_integrity()
    assert sched.pool.is_idle()
