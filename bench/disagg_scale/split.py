"""The planner's P:D split for the workload: our autoscaler's own sizing
(services.autoscaler.sizing.size), fed the demand the workload offers in steady state and
the speed of a worker under the mock's timing model, with 16 workers in all.

`size` keeps the pair with the fewest workers, ties to the lower predicted ITL. Here the
total is fixed, so every split of 16 is a tie on workers: each is sized with both pools
pinned to it, and the one with the lowest predicted ITL wins (ties to fewer prefill
workers, as `size` iterates). The unconstrained choice is printed beside it: what the
planner would run if it were free to use fewer than 16.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.disagg_scale.workload import Mixed
from engine.config import MockTiming
from services.autoscaler.capacity import Capacity, DecodeLine
from services.autoscaler.sizing import Bounds, Demand, Sizing, Targets, size

CHUNK_TOKENS = 1024  # engine.config's max_num_batched_tokens: a prefill worker's step
MOCK_BLOCKS = 4096  # engine.mock.MOCK_NUM_BLOCKS: a mock worker's KV pool
MAX_NUM_SEQS = 64  # engine.config's default
BLOCK_SIZE = 16
TARGETS = Targets()  # the autoscaler's defaults (tandem serve --autoscale's flags)


def targets_at(speed: float) -> Targets:
    """The default targets for a mock `speed` times as fast (latencies 1/speed as long)."""
    return Targets(TARGETS.ttft_s / speed, TARGETS.itl_s / speed)


@dataclass(frozen=True, slots=True)
class Split:
    prefill: int
    decode: int
    itl_s: float | None  # the planner's predicted decode ITL at this split
    reason: str
    fewest: dict[str, int]  # the planner's choice with no fixed total


def capacity(t: MockTiming, context: float) -> Capacity:
    """One worker's speeds as the autoscaler would learn them from a mock worker:
    prompt tokens/s in full chunks, and the decode step's line at `context` tokens a
    sequence (the per-context cost folded into the per-sequence slope)."""
    cap = Capacity()
    chunk_s = (t.step_ms + t.prefill_ms_per_token * CHUNK_TOKENS) / t.speed / 1000
    cap.prefill_tok_s = CHUNK_TOKENS / chunk_s
    per_seq_ms = t.decode_ms_per_seq + t.decode_ms_per_1k_context * context / 1000
    cap.decode = DecodeLine((t.step_ms + t.decode_ms) / t.speed / 1000, per_seq_ms / t.speed / 1000)
    return cap


def demand(w: Mixed, cap: Capacity) -> Demand:
    """The steady state by Little's law: prompt tokens/s offered, and the requests (and
    their KV blocks) decoding at once, at the decode step of one sequence."""
    assert cap.decode is not None
    step = cap.decode.step_s(1)
    chat_s = w.chat_output * step  # a chat's life on a decode worker
    chat_rate = w.chat_concurrency / chat_s
    long_decoding = w.long_rate * w.long_output * step
    prompt_tok_s = chat_rate * w.chat_prompt_tokens + w.long_rate * w.long_input
    blocks = w.chat_concurrency * _blocks(w.chat_prompt_tokens + w.chat_output)
    blocks += round(long_decoding * _blocks(w.long_input + w.long_output))
    return Demand(
        prefill_tok_s=prompt_tok_s,
        requests=round(w.chat_concurrency + long_decoding),
        used_blocks=blocks,
        blocks_per_worker=MOCK_BLOCKS,
        max_num_seqs=MAX_NUM_SEQS,
    )


def plan(d: Demand, cap: Capacity, total: int, targets: Targets = TARGETS) -> Split:
    """The split of `total` workers the planner predicts the lowest ITL for."""
    best: tuple[float, int, Sizing] | None = None
    for p in range(1, total):
        bounds = {"prefill": Bounds(p, p), "decode": Bounds(total - p, total - p)}
        s = size(d, cap, targets, bounds)
        if s is not None and s.itl_s is not None and (best is None or s.itl_s < best[0]):
            best = (s.itl_s, p, s)
    free = size(d, cap, targets, {"prefill": Bounds(0, total), "decode": Bounds(1, total)})
    fewest = free.replicas if free is not None else {}
    if best is None:
        raise ValueError(f"no split of {total} workers meets the planner's targets: {d}")
    itl, p, s = best
    return Split(p, total - p, itl, s.reason, fewest)


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)
