"""The OpenAI endpoints fuzzed from the router's own OpenAPI schema (schemathesis), over real
HTTP, against a real router and mock workers in their own processes:

    Redis ── prefill-0 ── decode-0 (mock, zero step time) ── tandem router ── fuzzer (4 in flight)

Positive cases fit the schema (so the schema must say what the API really accepts, or they
stop at a 400); negative cases break it. Every answer must be a 200 (a whole stream for
stream=true, with no error event in it) or a 4xx in OpenAI's error shape; never a 5xx.
Afterwards every process still runs and every worker's block pool is clean.

Seeded and bounded: a fixed number of cases per endpoint and mode, cut short (not failed)
past a time budget on a machine busier than this one.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis

from tests.helpers.fault_cluster import MODEL, ClusterFactory
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow
ZERO_TIME = "step_ms=0,prefill_ms_per_token=0,decode_ms=0,decode_ms_per_seq=0"
SEED = 20261130
# Cases per endpoint (2 x 1000 requests). Positive ones reach the engine, so they are the
# most; negative ones mostly stop at validation.
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
EXAMPLES = {POSITIVE: 700, NEGATIVE: 300}
# For generating and sending them all (2000 take ~150 s here beside a busy neighbour),
# shared out in proportion: a run stops at the end of its share and of what earlier runs
# left.
BUDGET_S = 130.0
IN_FLIGHT = 4
# Generated lengths stay small so that thousands of requests fit the budget: a valid
# max_tokens (or min_tokens) above this comes down to it, and one is set where none is
# (the default would run on to 1024 tokens). Invalid values are left as they are.
MAX_TOKENS = 8
FUZZ_GRAMMAR = 'start: WORD (" " WORD)*\nWORD: /[a-z]+/'
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
CONFIG = {
    # Every request names the served model: a made-up name stops at 404 before anything
    # else is looked at.
    "parameters": {"body.model": MODEL},
    # A whole stream is read, up to its [DONE]: a body that holds max_tokens as null keeps
    # the router's default (up to 1,024 tokens, an event each), so room for that many.
    "max-stream-events": 1100,
    # Requests in failure messages as they were sent (max_tokens is no secret).
    "output": {"sanitization": {"enabled": False}},
}


@dataclass
class Outcomes:
    """What the fuzzer saw, per (endpoint, mode): statuses, and every answer that broke
    the rules, with the request that got it."""

    statuses: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)  # of valid requests, by message
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, key: tuple[str, str], r: schemathesis.Response | None, problem: str | None
    ) -> None:
        with self.lock:
            self.statuses.setdefault(key, Counter())[r.status_code if r else -1] += 1
            if problem is not None:
                self.failures.append(problem)
            elif r is not None and r.status_code != 200 and key[1] == POSITIVE:
                self.refusals[json.loads(r.text)["error"]["message"][:80]] += 1

    def sent(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


def test_fuzzed_requests_never_get_a_5xx(cluster_factory: ClusterFactory) -> None:
    c = cluster_factory(router_args=("--tool-call-parser=hermes",), **{"decode-0": ZERO_TIME})
    schema = schemathesis.openapi.from_url(
        f"{c.url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG), wait_for_schema=30
    )
    outcomes = Outcomes()
    started = time.monotonic()
    runs = [(path, mode, n) for path in ENDPOINTS for mode, n in EXAMPLES.items()]
    total, done = sum(n for _, _, n in runs), 0
    with _sender(c.url, outcomes) as send:
        for path, mode, examples in runs:
            done += examples  # each run's deadline: its share of the budget, and what is left
            deadline = started + BUDGET_S * done / total
            strategy = schema[path]["POST"].as_strategy(generation_mode=mode)
            _run(strategy.map(_small_budget), examples, partial(send, (path, mode)), deadline)
    elapsed = time.monotonic() - started
    print(f"\n{outcomes.sent()} requests in {elapsed:.0f} s: {outcomes.statuses}")
    print(f"valid requests refused: {outcomes.refusals}")
    assert not outcomes.failures, "\n\n".join(outcomes.failures[:10])
    assert outcomes.sent() >= 1000, outcomes.statuses  # a slow machine still sends most
    for path in ENDPOINTS:  # the schema says what is served: valid requests are served
        positive = outcomes.statuses[(path, POSITIVE)]
        assert positive[200] >= 0.8 * sum(positive.values()), (path, positive, outcomes.refusals)
    assert all(p.proc.poll() is None for p in (c.router, *c.workers.values()))
    assert_idle(c.stats)


class _OutOfTime(Exception):
    pass


def _run(strategy: Any, examples: int, send: Callable[[Any], None], deadline: float) -> None:
    """`examples` seeded cases from `strategy`, each handed to `send`, until `deadline`
    (time.monotonic; generating is half the cost, so past it generating stops too)."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,  # a request's latency is the server's, not the generator's
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.seed(SEED)
    @hypothesis.given(strategy)
    def generate(case: Any) -> None:
        if time.monotonic() > deadline:
            raise _OutOfTime  # hypothesis replays it once, then lets it out
        send(case)

    with suppress(_OutOfTime):
        generate()


def _small_budget(case: Any) -> Any:
    body: Any = case.body
    if not isinstance(body, dict):
        return case
    _a_real_grammar(body)
    _real_tools(body)
    _rules_across_fields(body)
    names = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    for name in [*names, "min_tokens"]:
        value: Any = body.get(name)
        if _whole_number(value) and MAX_TOKENS < value < 2**32:
            body[name] = MAX_TOKENS
    if not names:
        body["max_tokens"] = MAX_TOKENS
    return case


def _a_real_grammar(body: dict[str, Any]) -> None:
    """A generated grammar's text (a string the schema allows) becomes a real grammar: text
    made at random is seldom one, and no JSON schema can say what is (a Lark or GBNF
    grammar is a language of its own). Other types are left to be refused."""
    outputs = body.get("structured_outputs")
    for holder, key in ((body, "guided_grammar"), (outputs, "grammar")):
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and holder[key]:
            holder[key] = FUZZ_GRAMMAR


FUZZ_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}


def _real_tools(body: dict[str, Any]) -> None:
    """Generated tools get a real JSON schema for their arguments (a dict made at random
    is seldom one, as a grammar's text is seldom a grammar), and a named tool_choice names
    one of them: the API refuses a name that is not in tools."""
    functions = [
        t["function"]
        for t in _listed(body.get("tools"))
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    for f in functions:
        if "parameters" in f:
            f["parameters"] = FUZZ_PARAMETERS
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and functions:
        choice["function"]["name"] = functions[0].get("name")


# Structured-output fields: one a request (the first sent is kept)
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


def _rules_across_fields(body: dict[str, Any]) -> None:
    """The API's rules between fields, which a JSON schema of each field cannot state (the
    README says them): one structured output at a time (tool_choice required or named is
    one, and needs tools), structured_outputs with one key, stream_options with
    stream=true only, top_logprobs with logprobs=true only, a message's content null only
    beside an assistant's tool calls. A valid
    case is made to keep them, so that the share of valid cases served measures what the
    schema says of each field."""
    asked = [k for k in GUIDED if body.get(k) is not None]
    for k in asked[1:]:
        del body[k]
    if asked and body.get("response_format") is not None:
        del body["response_format"]
    forced = body.get("tool_choice") not in (None, "none", "auto")  # a structured output too
    if forced and (asked or body.get("response_format") is not None or not body.get("tools")):
        del body["tool_choice"]
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict) and len(outputs) > 1:
        body["structured_outputs"] = dict([next(iter(outputs.items()))])
    if body.get("stream_options") is not None and body.get("stream") is not True:
        del body["stream_options"]
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        body["logprobs"] = True
    for m in _listed(body.get("messages")):
        if not isinstance(m, dict):
            continue
        if m.get("tool_calls") and m.get("role") != "assistant":
            del m["tool_calls"]  # only an assistant's message carries calls
        if m.get("content") is None and not m.get("tool_calls"):
            m["content"] = ""  # content may be null only beside tool calls


def _listed(value: Any) -> list[Any]:
    """A field's items when it is a list; none when a negative case made it something else."""
    return value if isinstance(value, list) else []


def _whole_number(value: Any) -> bool:
    """An integer as JSON Schema counts them (the fuzzer sends 3.0 too)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value % 1 == 0


@contextmanager
def _sender(url: str, outcomes: Outcomes) -> Iterator[Callable[[tuple[str, str], Any], None]]:
    """A `send(key, case)` that keeps IN_FLIGHT requests going, each on its thread's own
    session, and records each answer's verdict in `outcomes`."""
    local = threading.local()
    slots = threading.Semaphore(IN_FLIGHT)

    def call(key: tuple[str, str], case: Any) -> None:
        try:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            r = case.call(base_url=url, session=local.session, timeout=60)
            problem = _problem(r)
        except Exception as e:  # the router went away or hung: as bad as a 5xx
            r, problem = None, f"{type(e).__name__}: {e}"
        finally:
            slots.release()
        if problem is not None:
            problem = f"{case.as_curl_command(base_url=url)}\n  {problem}"
        outcomes.record(key, r, problem)

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures: list[Future[None]] = []

        def send(key: tuple[str, str], case: Any) -> None:
            slots.acquire()
            futures.append(pool.submit(call, key, case))

        yield send
        for f in futures:
            f.result()


def _problem(r: schemathesis.Response) -> str | None:
    """What is wrong with an answer, or None."""
    status, text = r.status_code, r.text
    if status >= 500:
        return f"{status}: {text[:500]}"
    if status >= 400:
        return _not_openai_error(status, text)
    if status != 200:
        return f"unexpected status {status}: {text[:500]}"
    if r.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return "stream read only in part" if r.stream_cut_short else _bad_stream(text)
    body = json.loads(text)
    return None if body.get("choices") else f"200 without choices: {text[:500]}"


def _not_openai_error(status: int, text: str) -> str | None:
    try:
        error = json.loads(text)["error"]
        ok = set(error) == {"message", "type", "param", "code"}
        ok = ok and isinstance(error["message"], str) and bool(error["message"])
        ok = ok and isinstance(error["type"], str)
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"{status} not in OpenAI's error shape: {text[:500]}"


def _bad_stream(text: str) -> str | None:
    """A stream must end with [DONE] and carry no error event (a 5xx sent as an event)."""
    data = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    if not data or data[-1] != "[DONE]":
        return f"stream without [DONE]: {text[-500:]}"
    errors = [d for d in data[:-1] if "error" in json.loads(d)]
    return f"error event in a stream: {errors[0][:500]}" if errors else None
