"""The mock backend: the real engine (block pool, scheduler, sampler, KV events) around a
modelled forward pass, started from a model's config alone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from engine import CacheConfig, Engine, EngineConfig, SamplingParams
from engine.config import MockTiming
from engine.hashing import chain_hashes
from engine.kv_events import BlockRemoved, BlockStored, KVEvent
from engine.mock import MOCK_NUM_BLOCKS, MockRunner, step_seconds
from engine.model.config import ModelLoadError
from engine.model.gguf_loader import read_gguf, read_gguf_config
from engine.model.loader import read_model_config
from engine.output import Lengths, RequestLengths
from engine.request import Request, Status
from engine.scheduler import ScheduledChunk
from services.cli import build_parser
from services.cluster.cluster_config import ClusterConfig
from services.cluster.pools import PoolSpec
from tests.helpers.engine_steps import drain as _drain
from tests.helpers.mock_model import write_config_only

VOCAB, EOS, BS = 512, 2, 16
FAST = MockTiming(speed=1000.0)  # unit tests need the numbers, not the waiting


@pytest.fixture
def config_only(tmp_path: Path) -> Path:
    """A model directory with a config.json and no weights at all."""
    return write_config_only(tmp_path, VOCAB, EOS)


def _engine(
    model: Path,
    role: str = "both",
    num_blocks: int | None = 64,
    timing: MockTiming = FAST,
    events: list[KVEvent] | None = None,
) -> Engine:
    cfg = EngineConfig(
        model=str(model),
        role=role,  # type: ignore[arg-type]
        backend="mock",
        cache=CacheConfig(block_size=BS, num_blocks=num_blocks),
        mock=timing,
    )
    return Engine(
        cfg, on_kv_event=events.append if events is not None else None, load_tokenizer_files=False
    )


def _runner(engine: Engine) -> MockRunner:
    assert isinstance(engine.runner, MockRunner)
    return engine.runner


def _idle(*engines: Engine) -> None:
    for e in engines:
        e.pool.check_integrity()
        assert e.pool.is_idle()


# ---- the timing model ------------------------------------------------------------------


def _chunk(prompt_len: int, outputs: int, start: int, n: int) -> ScheduledChunk:
    req = Request("r", list(range(prompt_len)), SamplingParams(), 0.0)
    req.token_ids += [7] * outputs
    return ScheduledChunk(req, start, n, samples=start + n == req.num_tokens)


def test_step_seconds_is_the_documented_formula() -> None:
    t = MockTiming()
    prefill = _chunk(100, 0, 0, 100)
    decodes = [_chunk(50, 1, 50, 1), _chunk(180, 21, 200, 1)]  # context 51 and 201
    assert step_seconds(t, [prefill]) == pytest.approx((2.0 + 0.1 * 100) / 1000, rel=1e-12)
    want = (2.0 + 0.1 * 100 + 8.0 + 0.05 * 2 + 0.04 * 252 / 1000) / 1000
    assert step_seconds(t, [prefill, *decodes]) == pytest.approx(want, rel=1e-12)
    assert step_seconds(MockTiming(speed=4.0), decodes) == pytest.approx(
        step_seconds(t, decodes) / 4, rel=1e-12
    )
    # A preempted request's recompute (output tokens included) is prefill work.
    assert step_seconds(t, [_chunk(10, 5, 0, 15)]) == pytest.approx(3.5e-3, rel=1e-12)
    # The figures the module docstring quotes.
    assert step_seconds(t, [_chunk(1, 1, 1, 1)]) == pytest.approx(0.01005008, rel=1e-12)
    batch = [_chunk(2047, 1, 2047, 1)] * 64
    assert round(step_seconds(t, batch) * 1000, 1) == 18.4
    assert step_seconds(t, [_chunk(1000, 0, 0, 1000)]) == pytest.approx(0.102, rel=1e-12)


def test_prefix_hits_cut_the_modelled_prefill(config_only: Path) -> None:
    engine = _engine(config_only, timing=MockTiming())
    prompt = list(range(100, 164))  # 4 full blocks
    engine.add_request("a", prompt, SamplingParams(max_tokens=1))
    engine.step()
    assert _runner(engine).last_step_s == pytest.approx((2.0 + 0.1 * 64) / 1000, rel=1e-12)
    engine.add_request("b", prompt + list(range(300, 316)), SamplingParams(max_tokens=1))
    (out,) = engine.step()
    assert out.num_cached_tokens == 64
    assert _runner(engine).last_step_s == pytest.approx((2.0 + 0.1 * 16) / 1000, rel=1e-12)
    _idle(engine)


def test_a_step_lasts_the_modelled_time_asleep(config_only: Path) -> None:
    engine = _engine(config_only, timing=MockTiming(decode_ms=150.0))
    engine.add_request("a", [5] * 20, SamplingParams(max_tokens=3))
    engine.step()  # the prefill
    wall, cpu = time.perf_counter(), time.process_time()
    engine.step()  # a decode: 2 + 150 + 0.05 + 0.04 * 21 / 1000 ms
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert _runner(engine).last_step_s == pytest.approx(0.15205084, rel=1e-9)
    assert 0.152 <= wall < 1.0
    assert cpu < wall / 2  # it sleeps; it does not spin
    _drain(engine)
    _idle(engine)


def test_step_totals_count_prefill_and_decode_apart(config_only: Path) -> None:
    engine = _engine(config_only, timing=MockTiming(decode_ms=20.0))
    engine.add_request("a", list(range(100, 164)), SamplingParams(max_tokens=3))
    engine.add_request("b", list(range(200, 240)), SamplingParams(max_tokens=3))
    engine.step()  # both prompts: one prefill step, each samples its first token
    before = engine.totals.copy()
    assert (before.prefill_steps, before.prefill_tokens, before.decode_steps) == (1, 104, 0)
    engine.step()
    engine.step()  # two decode steps of two sequences, and both are done
    t = engine.totals
    assert (t.decode_steps, t.decode_tokens, t.prefill_steps) == (2, 4, 1)
    assert t.decode_busy_s >= 2 * 0.020  # the modelled steps, slept out
    assert before.decode_steps == 0  # a copy, not a view
    _idle(engine)


def test_the_lengths_of_finished_requests_give_their_percentiles(config_only: Path) -> None:
    engine = _engine(config_only)
    assert engine.lengths.percentiles() == Lengths()  # nothing finished yet
    for i, (prompt, output) in enumerate([(10, 1), (20, 2), (30, 3), (40, 4), (200, 9)]):
        engine.add_request(
            f"r{i}", list(range(100, 100 + prompt)), SamplingParams(max_tokens=output)
        )
    _drain(engine)
    # nearest rank of 5: the median is the 3rd, the 90th percentile the 5th; every answer
    # ran to its max_tokens
    assert engine.lengths.percentiles() == Lengths(30, 200, 3, 9, at_limit=1.0)
    _idle(engine)


def test_the_share_of_answers_ending_at_their_max_tokens_is_of_the_window() -> None:
    lengths = RequestLengths(window=4)
    assert lengths.percentiles().at_limit == 0.0  # none finished
    for at_limit in (True, False, True, True):  # a stop ended the second
        lengths.add(10, 5, at_limit)
    assert lengths.percentiles().at_limit == 0.75
    lengths.add(10, 5, True)  # the window keeps the last 4: the first is gone
    assert lengths.percentiles().at_limit == 0.75
    lengths.add(10, 5, True)  # and now the stopped one
    assert lengths.percentiles().at_limit == 1.0


def test_the_running_requests_outputs_so_far_give_a_floor_under_theirs(
    config_only: Path,
) -> None:
    engine = _engine(config_only)
    assert engine.load().running_output_p90 == 0  # nothing running
    for i, max_tokens in enumerate([2, 50, 50, 50, 50]):
        engine.add_request(f"r{i}", list(range(100, 140)), SamplingParams(max_tokens=max_tokens))
    for _ in range(6):  # one prefill step (a token each), five decode steps
        engine.step()
    # r0 finished at 2 tokens; the four running have output 6 each so far, long before
    # any of their 50 is known from a finished request
    assert engine.load().running == 4 and engine.load().running_output_p90 == 6
    assert engine.lengths.percentiles().output_p90 == 2
    _drain(engine)
    assert engine.load().running_output_p90 == 0
    _idle(engine)


# ---- the engine around it ----------------------------------------------------------------


def test_no_weights_are_read(config_only: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        Engine(EngineConfig(model=str(config_only), dtype="float32"), load_tokenizer_files=False)
    engine = _engine(config_only, num_blocks=None)
    assert engine.num_blocks == MOCK_NUM_BLOCKS and engine.max_model_len == 1024
    kv = _runner(engine).kv_cache
    assert tuple(kv.shape) == (MOCK_NUM_BLOCKS, 1, 2, BS, 1, 1) and kv.is_contiguous()
    assert str(kv.dtype) == "torch.float32" and kv.device.type == "cpu"


def test_generate_is_deterministic_and_never_emits_eos(config_only: Path) -> None:
    prompts = [[9, 8, 7] * 10, [9, 8, 7] * 10, [1, 2, 3, 4] * 9]
    params = SamplingParams(max_tokens=40)
    first = _engine(config_only).generate(prompts, params)
    again = _engine(config_only).generate(prompts[::-1], params)[::-1]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert first[0].token_ids == first[1].token_ids != first[2].token_ids
    assert all(c.finish_reason == "length" and len(c.token_ids) == 40 for c in first)
    assert all(EOS not in c.token_ids and max(c.token_ids) < VOCAB for c in first)
    assert len(set(first[2].token_ids)) > 30  # not a constant or a short cycle


def test_kv_events_come_from_the_real_pool(config_only: Path) -> None:
    events: list[KVEvent] = []
    engine = _engine(config_only, num_blocks=4, events=events)
    a, b = list(range(100, 132)), list(range(200, 248))
    engine.generate([a], SamplingParams(max_tokens=1))  # blocks 0, 1 cached
    engine.generate([b], SamplingParams(max_tokens=1))  # takes 2, 3, then evicts 1
    ha, hb = chain_hashes(a, BS), chain_hashes(b, BS)
    assert events == [
        BlockStored(1, ha[0], None, tuple(a[:16]), 0),
        BlockStored(2, ha[1], ha[0], tuple(a[16:]), 1),
        BlockRemoved(3, ha[1], 1),
        BlockStored(4, hb[0], None, tuple(b[:16]), 2),
        BlockStored(5, hb[1], hb[0], tuple(b[16:32]), 3),
        BlockStored(6, hb[2], hb[1], tuple(b[32:]), 1),
    ]
    _idle(engine)


def test_the_output_follows_the_kv_the_decode_side_holds(config_only: Path) -> None:
    """Prefill here, decode there with the blocks copied (NIXL's job between processes):
    the same tokens as one engine. Without the copy the decode side continues from
    garbage, and its tokens differ, as a real model's would."""
    prompt = list(range(50, 95))  # 3 blocks, the last partial
    params = SamplingParams(max_tokens=12)
    (colocated,) = _engine(config_only).generate([prompt], params)

    def disaggregated(copy_kv: bool) -> list[int]:
        prefill, decode = _engine(config_only, "prefill"), _engine(config_only, "decode")
        prefill.add_request("r", prompt, params)
        (first,) = _drain(prefill)
        req = decode.add_request("r", prompt, params, remote_prefill=True)
        assert decode.step() == [] and req.status is Status.WAITING_FOR_REMOTE_KV
        if copy_kv:
            held = prefill.held_request("r")
            assert held is not None
            src = held.block_ids
            decode.runner.kv_cache[req.block_ids] = prefill.runner.kv_cache[src]
        decode.remote_kv_ready("r", first)
        assert prefill.release_held("r")
        tokens = [first, *_drain(decode)]
        _idle(prefill, decode)
        return tokens

    assert disaggregated(copy_kv=True) == colocated.token_ids
    assert disaggregated(copy_kv=False) != colocated.token_ids


# ---- configuration -----------------------------------------------------------------------


def test_mock_timing_parses_and_validates() -> None:
    assert MockTiming.parse("") == MockTiming()
    assert MockTiming.parse(" decode_ms=12, speed=2 ") == MockTiming(decode_ms=12.0, speed=2.0)
    for bad, match in [
        ("decode=1", "KEY=VALUE with KEY one of"),
        ("decode_ms", "KEY=VALUE"),
        ("decode_ms=fast", "must be a number"),
        ("speed=0", "speed must be positive"),
        ("step_ms=-1", "step_ms must be finite and >= 0"),
        ("prefill_ms_per_token=nan", "finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            MockTiming.parse(bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        EngineConfig(model="m", backend="gpu")
    with pytest.raises(SystemExit):  # the flag's choices are engine.config.BACKENDS
        build_parser().parse_args(["serve", "--engine=gpu"])


def test_mock_workers_share_the_cpus_and_take_no_gpu() -> None:
    mock = EngineConfig(model="m", backend="mock")
    cfg = ClusterConfig(mock, prefill_workers=4, decode_workers=12)
    assert cfg.specs(cpus=2, gpus=8) == [
        PoolSpec("prefill", 4, 0.125, 0.0),
        PoolSpec("decode", 12, 0.125, 0.0),
    ]
    with_share = ClusterConfig(mock, cpus_per_worker=0.5)
    assert with_share.specs(cpus=2, gpus=0)[0] == PoolSpec("prefill", 1, 0.5, 0.0)


def test_gguf_config_alone_equals_the_full_reader(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(50000.0)
    w.add_eos_token_id(EOS)
    w.add_token_list([f"t{i}" for i in range(VOCAB)])  # arrays the scan skips
    w.add_token_scores([0.5] * VOCAB)
    w.add_token_types([1] * VOCAB)
    w.add_tensor("token_embd.weight", np.zeros((VOCAB, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cfg = read_model_config(path)
    assert cfg == read_gguf_config(path) == read_gguf(path)[0]
    assert (cfg.vocab_size, cfg.num_kv_heads, cfg.eos_token_ids) == (VOCAB, 2, (EOS,))
    assert cfg.max_position_embeddings == 2048 and cfg.tie_word_embeddings
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x09\x00\x00\x00")
    with pytest.raises(ModelLoadError, match="unsupported GGUF version 9"):
        read_model_config(tmp_path / "bad.gguf")


def test_token_ids_past_the_vocabulary_are_refused_at_admission(config_only: Path) -> None:
    """Not inside a step, where one request's bad id would fail the whole batch."""
    engine = _engine(config_only)
    vocab = engine.model_config.vocab_size
    for params in (
        SamplingParams(logit_bias={vocab: 1.0}),
        SamplingParams(stop_token_ids=[vocab]),
    ):
        with pytest.raises(ValueError, match="below the vocabulary"):
            engine.add_request("r", [1, 2, 3], params)
    assert not engine.has_unfinished()
