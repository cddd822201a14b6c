"""The routing benchmark's pure parts: workloads, the oracle, the load figure, the goals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bench.routing import report
from bench.routing.drive import load_ratio, routed_by_worker
from bench.routing.oracle import cached_blocks, oracle_hit_rate, pooled_lru_hit_rate
from bench.routing.workloads import ChatConfig, chat_workload
from engine.hashing import chain_hashes
from loadtest.prometheus import Series


class FakeTokenizer:
    """Enough of a tokenizer for PromptMaker: 1,000 ids, id 0 is EOS."""

    vocab_size = 1000
    eos_token_ids: tuple[int, ...] = (0,)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(map(str, ids))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        raise NotImplementedError


BS = 4


def test_oracle_hits_only_blocks_an_earlier_prompt_computed() -> None:
    a = list(range(1, 11))  # 10 tokens: blocks [1-4] [5-8], 2 tokens left over
    b = a[:8] + [50, 51, 52, 53, 54]  # shares both full blocks, then its own
    c = [99] + a[1:]  # differs in its first token: shares nothing
    assert oracle_hit_rate([a], BS) == 0.0
    assert oracle_hit_rate([a, b], BS) == pytest.approx(8 / 23)
    assert oracle_hit_rate([a, b, c], BS) == pytest.approx(8 / 33)
    assert oracle_hit_rate([], BS) == 0.0


def test_oracle_caps_a_fully_cached_prompt_like_the_engine() -> None:
    a = list(range(1, 9))  # exactly 2 blocks
    # Sent again, the engine recomputes its last block to get the last token's logits.
    assert oracle_hit_rate([a, a], BS) == pytest.approx(4 / 16)
    longer = a + [9]
    assert oracle_hit_rate([longer, a], BS) == pytest.approx(4 / 17)
    assert oracle_hit_rate([a, longer], BS) == pytest.approx(8 / 17)


def test_cached_blocks_is_the_leading_run() -> None:
    hashes = chain_hashes(list(range(1, 13)), BS)
    assert cached_blocks(hashes, {hashes[0], hashes[2]}, 12, BS) == 1
    assert cached_blocks(hashes, set(hashes), 13, BS) == 3
    assert cached_blocks(hashes, set(hashes), 12, BS) == 2  # capped at (12 - 1) // 4


def test_pooled_lru_forgets_the_least_recently_used_prompt() -> None:
    a, b = list(range(1, 10)), list(range(101, 110))  # 2 full blocks each, + 1 token
    prompts = [a, b, a]
    assert pooled_lru_hit_rate(prompts, BS, 4) == oracle_hit_rate(prompts, BS)
    assert pooled_lru_hit_rate(prompts, BS, 2) == 0.0  # b pushed both of a's blocks out
    # Room for 3: a's first block outlives its second (freed in reverse order).
    assert pooled_lru_hit_rate(prompts, BS, 3) == pytest.approx(4 / 27)


def test_chat_turns_extend_the_previous_turn_token_for_token() -> None:
    cfg = ChatConfig(
        conversations=30, system_prompts=3, system_len=(40, 50), user_len=(5, 9), reply_len=(3, 6)
    )
    w = chat_workload(cfg, FakeTokenizer())
    assert len(w.conversations) == 30 and w.num_requests == w.summary()["requests"]
    starts = [c.at for c in w.conversations]
    assert starts == sorted(starts) and starts[0] == 0.0
    systems = set()
    for c in w.conversations:
        assert 2 <= len(c.turns) <= 6 and c.turns[0].think_s == 0.0
        for prev, turn in zip(c.turns, c.turns[1:], strict=False):
            assert turn.prompt[: len(prev.prompt)] == prev.prompt
            assert 8 <= len(turn.prompt) - len(prev.prompt) <= 15  # reply + message
            assert turn.think_s > 0
        systems.add(c.turns[0].prompt[:40])
        assert 0 not in c.turns[-1].prompt  # never EOS
    assert len(systems) == 3
    again = chat_workload(cfg, FakeTokenizer())
    assert again.conversations == w.conversations  # seeded
    assert len(w.prompts_in_order()) == w.num_requests


def test_chat_oracle_is_high_and_order_keeps_turns() -> None:
    w = chat_workload(ChatConfig(conversations=20, system_len=(64, 64)), FakeTokenizer())
    order = w.prompts_in_order()
    for c in w.conversations:
        positions = [order.index(t.prompt) for t in c.turns]
        assert positions == sorted(positions)
    assert 0.5 < oracle_hit_rate(order, 16) < 1.0


def test_load_ratio_counts_idle_workers() -> None:
    assert load_ratio({"a": 2, "b": 2}) == 1.0
    assert load_ratio({"a": 6, "b": 0, "c": 0}) == pytest.approx(3.0)
    assert load_ratio({}) is None and load_ratio({"a": 0}) is None


def test_routed_by_worker_reads_the_prefill_pool_deltas() -> None:
    name = "tandem_routed_requests_total"
    before: dict[Series, float] = {(name, (("pool", "prefill"), ("worker", "prefill-0"))): 3.0}
    after: dict[Series, float] = {
        (name, (("pool", "prefill"), ("worker", "prefill-0"))): 10.0,
        (name, (("pool", "prefill"), ("worker", "prefill-1"))): 4.0,
        (name, (("pool", "decode"), ("worker", "decode-0"))): 14.0,
    }
    assert routed_by_worker(before, after, "prefill") == {"prefill-0": 7.0, "prefill-1": 4.0}


def test_goals_judge_kv_against_oracle_and_round_robin() -> None:
    mode = {"failed": 0, "cancelled": 0, "max_load_ratio": 1.2}
    w: dict[str, Any] = {
        "oracle_hit_rate": 0.8,
        "modes": {
            "kv": {**mode, "hit_rate": 0.76, "ttft_mean_ms": 100.0},
            "round-robin": {**mode, "hit_rate": 0.4, "ttft_mean_ms": 250.0},
        },
    }
    report.add_ratios(w)
    assert w["modes"]["kv"]["hit_vs_oracle"] == pytest.approx(0.95)
    assert w["modes"]["kv"]["ttft_vs_round_robin"] == pytest.approx(0.4)
    assert w["modes"]["round-robin"]["ttft_vs_round_robin"] == pytest.approx(1.0)
    g = report.goals({"chat": w})
    assert all(v["pass"] for v in g.values()) and len(g) == 4
    w["modes"]["kv"]["max_load_ratio"] = 1.6
    assert not report.goals({"chat": w})["chat.kv.max_load_ratio"]["pass"]
