"""A prefill worker told to stop (SIGTERM, as an autoscaler's scale-down or a pod's end
does): it leaves the registry at once and refuses new prompts with UNAVAILABLE, so routers
still sending it some until their next registry read go elsewhere at once (a prompt
prefilled there could not be read: decode workers forget a peer as it leaves). Real
processes: Redis and a mock `tandem worker --role prefill`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
import redis

from engine import SamplingParams
from services.cluster.launch import start_worker
from services.cluster.redis_server import RedisServer
from services.cluster.registry import Registry
from services.pb import worker_pb2, worker_pb2_grpc
from services.wire import params_to_pb

pytestmark = pytest.mark.slow


def _prefill(stub: worker_pb2_grpc.WorkerStub, rid: str) -> worker_pb2.PrefillResponse:
    params = params_to_pb(SamplingParams(max_tokens=8, ignore_eos=True))
    req = worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=[5, 6, 7], params=params)
    response: worker_pb2.PrefillResponse = stub.Prefill(req, timeout=30)
    return response


def test_a_stopping_prefill_worker_refuses_new_prompts_at_once(
    tmp_path: Path, smollm_path: Path
) -> None:
    with RedisServer() as server:
        registry = Registry(redis.Redis.from_url(server.url))
        worker, address = start_worker(
            tmp_path, "prefill-0", "prefill", server.url, smollm_path, "--engine=mock"
        )
        try:
            with grpc.insecure_channel(address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                # served, and its blocks held for a reader that never comes: the worker
                # stays up for its drain, so the refusal below is its own, not a closed port
                assert _prefill(stub, "before").kv.block_ids
                worker.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while registry.workers("prefill"):
                    assert time.monotonic() < deadline, "the worker never left the registry"
                    time.sleep(0.02)
                with pytest.raises(grpc.RpcError) as refused:
                    _prefill(stub, "after")
                # its held blocks released, it has nothing left to finish: it stops now
                stub.Abort(worker_pb2.AbortRequest(request_id="before"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "takes no new prompts" in (refused.value.details() or "")
        finally:
            worker.stop(signal.SIGTERM)
