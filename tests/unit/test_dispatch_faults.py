"""The per-request flow (services/router/dispatch.py) when workers fail or are full: prefill
retries and the local fallback, circuit breakers, decode resumed on another worker, and
what the client is told when nothing is left to try."""

from __future__ import annotations

import asyncio

import pytest

from engine.sampling_params import SamplingParams
from services.router.backend import BackendError, GenerateRequest
from services.router.metrics import RouterMetrics
from services.router.worker_client import WorkerError
from services.wire import PrefillCall, PrefillReply
from tests.helpers.dispatch_fakes import HANDLE, PROMPT, FakeWorker, chunk, dispatcher, run


def test_a_failed_prefill_falls_back_to_the_decode_worker_counted() -> None:
    prefill = FakeWorker(WorkerError("unavailable", "gone"))
    decode = FakeWorker(chunks=[chunk([5], done=True)])
    d, metrics = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = run(d)
    assert [(o.token_ids, o.route) for o in out] == [([5], "local_prefill")]
    assert metrics.prefill_fallbacks.labels(reason="unavailable")._value.get() == 1
    assert prefill.aborted == ["r1"]  # whatever it did is freed


def test_an_empty_prefill_pool_is_a_route_not_a_fallback() -> None:
    # scaled to zero by the autoscaler: nothing failed, so nothing is logged as a fallback
    decode = FakeWorker(chunks=[chunk([5], done=True)])
    d, metrics = dispatcher(**{"decode-0": decode})
    out = run(d)
    assert [(o.token_ids, o.route) for o in out] == [([5], "local_prefill_no_pool")]
    assert metrics.prefill_fallbacks.labels(reason="no_prefill_worker")._value.get() == 0
    assert decode.decodes[0].handle is None  # prefilled there


def test_a_failed_prefill_is_tried_on_another_prefill_worker_first() -> None:
    hung = FakeWorker(WorkerError("deadline_exceeded", "no answer in time"))
    works = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([6], done=True)])
    d, metrics = dispatcher(**{"prefill-0": hung, "prefill-1": works, "decode-0": decode})
    out = run(d)
    assert [o.token_ids for o in out] == [[42], [6]]
    assert len(hung.prefills) == len(works.prefills) == 1 and hung.aborted == ["r1"]
    assert decode.decodes[0].handle == HANDLE  # from the worker that answered
    assert metrics.prefill_retries.labels(reason="deadline_exceeded")._value.get() == 1
    assert metrics.prefill_fallbacks.labels(reason="deadline_exceeded")._value.get() == 0


class _PrefillHangs(FakeWorker):
    async def prefill(self, call: PrefillCall, timeout_s: float) -> PrefillReply:
        self.prefills.append(call)
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")


def test_a_request_cancelled_during_its_prefill_frees_what_the_worker_may_hold() -> None:
    # The worker may answer just as the client leaves (or a sibling choice fails), holding
    # the blocks under a lease that nobody would read until it ran out.
    prefill, decode = _PrefillHangs(), FakeWorker()
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": decode})

    async def leave_during_prefill() -> None:
        stream = d.generate(GenerateRequest("r1", PROMPT, SamplingParams(max_tokens=4)))
        first = asyncio.ensure_future(anext(stream))
        while not prefill.prefills:
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await d.close()  # waits for the aborts it sent

    asyncio.run(leave_during_prefill())
    assert prefill.aborted == ["r1"] and not decode.decodes


def test_a_worker_that_keeps_failing_opens_its_breaker_and_gets_no_more_calls() -> None:
    failing = FakeWorker(WorkerError("unavailable", "broken"))
    other = FakeWorker(WorkerError("unavailable", "broken too"))
    decode = FakeWorker(chunks=[chunk([5], done=True)])
    d, metrics = dispatcher(**{"prefill-0": failing, "prefill-1": other, "decode-0": decode})

    async def four_requests() -> list[list[str]]:
        routes = []
        for i in range(4):  # each tries both prefill workers, then prefills locally
            request = GenerateRequest(f"r{i}", PROMPT, SamplingParams(max_tokens=4))
            routes.append([delta.route async for delta in d.generate(request)])
        await d.close()
        return routes

    routes = asyncio.run(four_requests())
    assert routes == [["local_prefill"]] * 4
    # Three failures in a row open each breaker: the fourth request asks neither.
    assert len(failing.prefills) == len(other.prefills) == 3
    for worker in ("prefill-0", "prefill-1"):
        assert metrics.breaker_changes.labels(worker=worker, change="opened")._value.get() == 1
    assert metrics.prefill_fallbacks.labels(reason="no_prefill_worker")._value.get() == 1


def test_a_rejected_request_is_the_clients_error() -> None:
    prefill = FakeWorker(WorkerError("invalid_argument", "top_p must be in (0, 1]"))
    d, _ = dispatcher(**{"prefill-0": prefill, "decode-0": FakeWorker()})
    with pytest.raises(BackendError) as e:
        run(d)
    assert (e.value.status, e.value.message) == (400, "top_p must be in (0, 1]")


def _retries(metrics: RouterMetrics, when: str) -> float:
    return metrics.decode_retries.labels(when=when)._value.get()  # type: ignore[no-any-return]


def test_a_decode_worker_failing_mid_stream_hands_the_rest_to_another() -> None:
    dies = FakeWorker(chunks=[chunk([5])], fail=WorkerError("unavailable", "Stream removed"))
    takes_over = FakeWorker(chunks=[chunk([6]), chunk([7], done=True)])
    d, metrics = dispatcher(**{"decode-0": dies, "decode-1": takes_over})
    out = run(d, prompt=[1])
    assert [o.token_ids for o in out] == [[5], [6], [7]]  # no gap, nothing twice
    assert [o.route for o in out] == ["local_prefill", "", ""]
    assert [o.num_cached_tokens for o in out] == [12, 0, 0]  # its hits cover our own output
    resumed = takes_over.decodes[0]
    assert (resumed.prompt_token_ids, resumed.generated_token_ids) == ([1], [5])
    assert resumed.handle is None and resumed.params == SamplingParams(max_tokens=4)
    assert dies.aborted == ["r1"] and _retries(metrics, "mid_stream") == 1


def test_a_disaggregated_decode_failing_before_its_first_token_resumes_and_frees_the_kv() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    dies = FakeWorker(fail=WorkerError("unavailable", "connection reset"))
    takes_over = FakeWorker(chunks=[chunk([6], done=True)])
    d, metrics = dispatcher(**{"prefill-0": prefill, "decode-0": dies, "decode-1": takes_over})
    out = run(d)
    assert [o.token_ids for o in out] == [[42], [6]]
    assert takes_over.decodes[0].generated_token_ids == [42]  # the client has it already
    assert prefill.aborted == ["r1"]  # its held blocks will never be read now
    assert _retries(metrics, "mid_stream") == 1


def test_a_stream_cut_short_is_a_failure_too() -> None:
    cut = FakeWorker(chunks=[chunk([5])])  # ends without a finished chunk, no error
    takes_over = FakeWorker(chunks=[chunk([6], done=True)])
    d, _ = dispatcher(**{"decode-0": cut, "decode-1": takes_over})
    assert [o.token_ids for o in run(d, prompt=[1])] == [[5], [6]]


def test_with_no_other_decode_worker_the_client_gets_a_502_that_says_why() -> None:
    dies = FakeWorker(chunks=[chunk([5])], fail=WorkerError("unavailable", "recvmsg: reset"))
    d, _ = dispatcher(**{"decode-0": dies})
    with pytest.raises(BackendError) as e:
        run(d, prompt=[1])
    assert e.value.status == 502 and "no other one is available" in e.value.message
    assert "recvmsg" not in e.value.message  # an internal detail: logged, not sent


def test_decode_attempts_are_bounded() -> None:
    fakes = {f"decode-{i}": FakeWorker(fail=WorkerError("unavailable", "down")) for i in range(3)}
    d, metrics = dispatcher(attempts=2, **fakes)
    with pytest.raises(BackendError) as e:
        run(d, prompt=[1])
    assert e.value.status == 502 and "failed on 2 decode workers" in e.value.message
    assert sorted(len(f.decodes) for f in fakes.values()) == [0, 1, 1]  # two workers, once each
    assert _retries(metrics, "before_first_token") == 1


def test_a_recomputed_prompt_releases_the_prefill_workers_lease() -> None:
    prefill = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([5], done=True, kv_recomputed=True)])
    d, metrics = dispatcher(**{"prefill-0": prefill, "decode-0": decode})
    out = run(d)
    assert out[1].num_cached_tokens == 12  # the decode worker computed the prompt itself
    assert metrics.kv_recomputed._value.get() == 1
    assert prefill.aborted == ["r1"]


def test_a_full_worker_is_passed_over_and_its_breaker_left_alone() -> None:
    full = WorkerError("resource_exhausted", "prefill-0 has 256 requests waiting already")
    busy = FakeWorker(full)
    works = FakeWorker(PrefillReply(42, None, 8, None, HANDLE))
    decode = FakeWorker(chunks=[chunk([6], done=True)])
    d, metrics = dispatcher(**{"prefill-0": busy, "prefill-1": works, "decode-0": decode})

    async def requests(n: int) -> list[list[list[int]]]:
        out = []
        for i in range(n):
            request = GenerateRequest(f"r{i}", PROMPT, SamplingParams(max_tokens=4))
            out.append([delta.token_ids async for delta in d.generate(request)])
        await d.close()
        return out

    assert asyncio.run(requests(8)) == [[[42], [6]]] * 8
    assert len(busy.prefills) >= 3  # more than its breaker's threshold, and still asked
    assert metrics.prefill_retries.labels(reason="resource_exhausted")._value.get() == len(
        busy.prefills
    )
    assert metrics.breaker_changes.labels(worker="prefill-0", change="opened")._value.get() == 0


def test_when_every_decode_worker_is_full_the_client_is_told_to_come_back() -> None:
    full = {
        f"decode-{i}": FakeWorker(fail=WorkerError("resource_exhausted", "queue full"))
        for i in range(2)
    }
    d, _ = dispatcher(**full)
    with pytest.raises(BackendError) as e:
        run(d, prompt=[1])
    assert (e.value.status, e.value.retry_after_s) == (429, 1)
    assert all(len(f.decodes) == 1 for f in full.values())  # each asked once
    assert all(ref.breaker.failures == 0 for ref in d.cluster.workers.workers.values())
