"""The committed generated code equals what `make proto` produces from proto/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from services.pb.generate import ROOT

PB = ROOT / "services" / "pb"


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools is a dev dependency (pip install -e .[dev])",
)
def test_generated_code_is_fresh(tmp_path: Path) -> None:
    # In a process of its own: grpc_tools' protoc crashes when loaded beside torch.
    cmd = [sys.executable, "-m", "services.pb.generate", str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=120)
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in PB.iterdir() if p.name in fresh}
    assert fresh.keys() == committed.keys(), "run `make proto` and commit services/pb"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit services/pb"


def test_messages_round_trip() -> None:
    from services.pb import events_pb2, worker_pb2

    event = events_pb2.KVEvent(
        worker_id="decode-0",
        seq=7,
        stored=events_pb2.BlockStored(block_hash=2**64 - 1, token_ids=[1, 2], block_id=3),
    )
    back = events_pb2.KVEvent.FromString(event.SerializeToString())
    assert back.WhichOneof("kind") == "stored"
    assert (back.seq, back.stored.block_hash, list(back.stored.token_ids)) == (7, 2**64 - 1, [1, 2])
    assert not back.stored.HasField("parent_hash")
    req = worker_pb2.DecodeRequest(
        request_id="r", prompt_token_ids=[5], params=worker_pb2.SamplingParams(max_tokens=4)
    )
    assert not req.HasField("kv")


def test_sampling_params_fit_the_wire() -> None:
    # a negative seed is read modulo 2**64 (as torch.Generator.manual_seed reads it) and
    # crosses the wire's uint64 unchanged; a top_k or max_tokens past uint32 is refused
    # where the params are made, never failing later inside protobuf
    from engine.sampling_params import GuidedSpec, SamplingParams
    from services.wire.engine_types import params_from_pb, params_to_pb

    p = SamplingParams(max_tokens=4, seed=-1)
    assert p.seed == 2**64 - 1
    assert params_from_pb(params_to_pb(p)) == p
    # absent and 0 differ for prompt_logprobs (0: the prompt tokens' own logprobs)
    for k in (None, 0, 3):
        asked = SamplingParams(prompt_logprobs=k, guided=GuidedSpec("regex", "a+", after=(5, 6)))
        assert params_from_pb(params_to_pb(asked)) == asked
    with pytest.raises(ValueError, match="top_k must be in"):
        SamplingParams(top_k=2**32)
    with pytest.raises(ValueError, match="max_tokens must be in"):
        SamplingParams(max_tokens=2**32)
