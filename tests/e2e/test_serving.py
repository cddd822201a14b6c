"""The whole local cluster behind the OpenAI API: disaggregated answers equal colocated
ones and transformers', the official SDK works, NIXL moves exactly the missing blocks,
many concurrent streams leave every block pool idle, and bad requests are refused."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine.tokenizer import Tokenizer, load_tokenizer
from tests.e2e.conftest import API_KEY, MODEL, Served
from tests.helpers.hf_reference import hf_greedy
from tests.helpers.idle import assert_idle

pytestmark = pytest.mark.slow

# Long enough (with the chat template's system prompt) to be prefilled remotely.
QUESTIONS = [
    "Describe in a few sentences how a steam engine turns heat into motion, step by step, "
    "starting from the fire in the firebox and ending with the wheels of the locomotive.",
    "Give three reasons why people keep cats as pets, and one reason some people do not. "
    "Keep each reason to one short sentence and number them from one to four.",
    "Explain what a prime number is to a ten year old, with two examples and one "
    "counterexample, and say why the number one is not considered to be prime.",
    "Write a short paragraph about the history of the printing press and why it mattered "
    "so much for science, religion and ordinary people in Europe after 1450.",
]


@pytest.fixture(scope="module")
def tokenizer(smollm_path: Path) -> Tokenizer:
    return load_tokenizer(smollm_path)


def _chat(served: Served, question: str, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _chats(served: Served, questions: list[str], **kw: Any) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(len(questions)) as pool:  # concurrently: one continuous batch
        return list(pool.map(lambda q: _chat(served, q, **kw), questions))


def _wait_idle(served: Served) -> None:
    assert_idle(served.worker_stats, timeout_s=20.0)


def test_disaggregated_equals_colocated_equals_transformers(
    cluster: Served, colocated: Served, tokenizer: Tokenizer, smollm_hf: object
) -> None:
    routed_before = cluster.metric("tandem_requests_total", route="disaggregated")
    disagg = _chats(cluster, QUESTIONS)
    coloc = _chats(colocated, QUESTIONS)
    for q, a, b in zip(QUESTIONS, disagg, coloc, strict=True):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}])
        assert len(prompt) > 32  # above the local-prefill threshold: really disaggregated
        want = tokenizer.decode(hf_greedy(smollm_hf, prompt, 24)[0])
        assert a["choices"][0]["message"]["content"] == want
        assert b["choices"][0]["message"]["content"] == want
        assert a["usage"]["prompt_tokens"] == len(prompt) and a["usage"]["completion_tokens"] == 24
    assert cluster.metric("tandem_requests_total", route="disaggregated") == routed_before + 4
    assert colocated.metric("tandem_requests_total", route="colocated") >= 4
    _wait_idle(cluster)
    _wait_idle(colocated)


def test_nixl_moved_what_the_decode_worker_read(cluster: Served) -> None:
    _chats(cluster, QUESTIONS[:2])
    stats = cluster.worker_stats()
    read = sum(s.kv_bytes_read for s in stats.values())
    assert read > 0
    assert cluster.metric("tandem_nixl_bytes_total") == read  # one router: it saw every read
    # A repeated prompt: the decode worker holds all but its last block, so it prefills
    # that block itself (conditional disaggregation counts its own cache): nothing moves.
    local = cluster.metric("tandem_requests_total", route="local_prefill")
    before = sum(s.kv_bytes_read for s in cluster.worker_stats().values())
    answer = _chat(cluster, QUESTIONS[0])
    moved = sum(s.kv_bytes_read for s in cluster.worker_stats().values()) - before
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 and moved == 0
    assert cluster.metric("tandem_requests_total", route="local_prefill") == local + 1


def test_openai_sdk_streaming_and_not(cluster: Served) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]

    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        max_tokens=12,
        temperature=0,
    )
    assert chat.choices[0].message.content and chat.usage is not None
    assert chat.usage.prompt_tokens_details is not None

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content  # same greedy answer, streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

    done = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5)
    assert done.choices[0].text and done.usage is not None and done.usage.completion_tokens <= 5


def test_n_choices_compute_their_prompt_once(cluster: Served, tokenizer: Tokenizer) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0)
    question = "Name a colour of the rainbow and say one thing that has that colour."
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}])
    cached = cluster.metric("tandem:prompt_tokens_cached_total")
    got = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        n=3,
        max_tokens=10,
        temperature=0,
    )
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert len({c.message.content for c in got.choices}) == 1  # greedy: one answer, thrice
    assert got.usage is not None and got.usage.prompt_tokens == len(prompt)
    # the second and third choices found every whole block of the prompt cached (the
    # first, what it found: the chat template's system prompt is every chat's beginning)
    first = got.usage.prompt_tokens_details
    assert first is not None and first.cached_tokens is not None
    whole = (len(prompt) - 1) // 16 * 16
    counted = cluster.metric("tandem:prompt_tokens_cached_total") - cached
    assert counted == first.cached_tokens + 2 * whole
    _wait_idle(cluster)


async def _stream(client: httpx.AsyncClient, question: str, n: int) -> tuple[int, bool]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage, done = None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None
    return usage["completion_tokens"], done


def test_32_concurrent_streams_complete_and_pools_return_to_idle(cluster: Served) -> None:
    questions = [f"{QUESTIONS[i % 4]} (Variant {i}.)" for i in range(16)] + [
        f"Say hi {i}."
        for i in range(16)  # short: prefilled on the decode worker
    ]

    async def run() -> list[tuple[int, bool]]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=600) as c:
            return await asyncio.gather(*(_stream(c, q, 16) for q in questions))

    results = asyncio.run(run())
    assert results == [(16, True)] * 32
    _wait_idle(cluster)


def test_cancelled_stream_frees_blocks_on_both_workers(cluster: Served) -> None:
    aborted = cluster.metric("tandem_requests_total", status="aborted")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTIONS[2]}],
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    with cluster.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    _wait_idle(cluster)
    assert cluster.metric("tandem_requests_total", status="aborted") == aborted + 1


TOO_LONG = "word " * 9000


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{not json", 400, None),
        ({"model": MODEL, "messages": "hello"}, 400, "messages"),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": TOO_LONG}]}, 400, "messages"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 10**7}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "prompt": "hi", "n": 9}, 400, "n"),  # 1 to 8
    ],
)
def test_bad_requests_get_openai_errors_and_the_cluster_keeps_serving(
    cluster: Served, body: Any, status: int, param: str | None
) -> None:
    path = "/v1/chat/completions" if "messages" in str(body) else "/v1/completions"
    with cluster.client() as c:
        if isinstance(body, str):
            r = c.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = c.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    assert _chat(cluster, "Say hi.", max_tokens=2)["choices"][0]["finish_reason"] == "length"


def test_api_key_guards_everything_but_the_probes(cluster: Served) -> None:
    with httpx.Client(base_url=cluster.url, timeout=30) as c:
        # Kubernetes' probes send no key: they answer, and say only up or ready
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json() == {"status": "ready"}
        guarded = [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")]
        for method, path in guarded:
            r = c.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with cluster.client() as c:
        assert c.get("/metrics").status_code == 200


def test_load_generator_against_the_cluster(cluster: Served, tmp_path: Path) -> None:
    """`tandem bench` against our own router: no failures, and the server-side figures it
    scrapes from /metrics show the disaggregated prefills and the NIXL bytes."""
    from services.cli import main as tandem  # it passes loadtest the default tokenizer

    args = ["bench", "run", f"--url={cluster.url}", f"--api-key={API_KEY}", "--concurrency=2"]
    args += ["--num-prompts=4", "--input-len=96", "--output-len=8", "--warmup=0"]
    assert tandem([*args, "--label=e2e", f"--out={tmp_path}", "--quiet"]) == 0
    (point,) = [p for p in tmp_path.glob("e2e-*.json") if "summary" not in p.name]
    result = json.loads(point.read_text())
    assert result["completed"] == 4 and result["failed"] == 0
    assert result["total_output_tokens"] == 32
    server = result["server_metrics"]
    assert server["requests_by_route"].get("disaggregated", 0) >= 4
    assert server["nixl_bytes"] > 0


def test_serve_prints_where_its_start_up_went(cluster: Served) -> None:
    log = "".join(cluster.proc.lines)
    line = next((ln for ln in log.splitlines() if "Started in:" in ln), "")
    total, ray_redis, workers = (float(x) for x in re.findall(r"([\d.]+) s", line))
    assert abs(total - (ray_redis + workers)) < 0.15 and workers > 0, line
