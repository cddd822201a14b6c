"""top_logprobs on the real default model: each position's k likeliest tokens and their
logprobs equal transformers' log-softmax top-k within 1e-4 (float32, the same GGUF)."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, SamplingParams
from engine.sampling_params import MAX_TOP_LOGPROBS

pytestmark = pytest.mark.slow

TOL = 1e-4
QUESTIONS = ["What is the capital of France?", "Name a colour."]


@torch.inference_mode()
def hf_top(model, ids: list[int], k: int) -> list[list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    """The top k at each position of the output `ids[prompt:]`, from one forward pass over
    prompt + output (the positions before each output token)."""
    logits = model(torch.tensor([ids])).logits[0].float()
    values, idx = torch.log_softmax(logits, -1).topk(k, dim=-1)
    return [
        list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(idx, values, strict=True)
    ]


@pytest.mark.parametrize("k", [1, 5, MAX_TOP_LOGPROBS])
def test_top_logprobs_equal_transformers(smollm_f32: Engine, smollm_hf: object, k: int) -> None:
    assert smollm_f32.tokenizer is not None
    prompts = [
        smollm_f32.tokenizer.apply_chat_template([{"role": "user", "content": q}])
        for q in QUESTIONS
    ]
    params = SamplingParams(max_tokens=12, top_logprobs=k)
    assert params.logprobs  # top_logprobs implies the chosen tokens' logprobs
    tag = f"top-{k}"
    reqs = [smollm_f32.add_request(f"{tag}-{i}", p, params) for i, p in enumerate(prompts)]
    while smollm_f32.has_unfinished():
        smollm_f32.step()
    for req, prompt in zip(reqs, prompts, strict=True):
        out = req.output_token_ids
        want = hf_top(smollm_hf, prompt + out, k)[len(prompt) - 1 : len(prompt) - 1 + len(out)]
        assert len(req.top_logprobs) == len(out)
        for got, ref, chosen, lp in zip(req.top_logprobs, want, out, req.logprobs, strict=True):
            assert len(got) == k
            assert got[0][0] == chosen  # greedy: the likeliest is the one chosen
            assert got[0][1] == pytest.approx(lp, abs=1e-6)
            for (gid, glp), (rid, rlp) in zip(got, ref, strict=True):
                # ids equal unless two logprobs tie within the tolerance
                assert abs(glp - rlp) < TOL
                assert gid == rid or any(t == gid for t, _ in ref)


def test_prompt_logprobs_equal_transformers(smollm_f32: Engine, smollm_hf: object) -> None:
    """Completions' echo: each prompt token's logprob given those before it, and the k
    likeliest there, from one prefill (split into chunks where the budget says so)."""
    assert smollm_f32.tokenizer is not None
    prompt = smollm_f32.tokenizer.encode("The capital of France is Paris. The capital of Italy")
    k = 3
    req = smollm_f32.add_request("echo", prompt, SamplingParams(max_tokens=1, prompt_logprobs=k))
    while smollm_f32.has_unfinished():
        smollm_f32.step()
    with torch.inference_mode():  # position p scores token p + 1
        logits = smollm_hf(torch.tensor([prompt])).logits[0, :-1].float()  # type: ignore[operator]
    lp = torch.log_softmax(logits, -1)
    chosen = lp[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    assert req.prompt_logprobs == pytest.approx(chosen.tolist(), abs=TOL)
    values, idx = lp.topk(k, dim=-1)
    assert len(req.prompt_top_logprobs) == len(prompt) - 1
    for got, ids, vals in zip(req.prompt_top_logprobs, idx.tolist(), values.tolist(), strict=True):
        for (gid, glp), rlp in zip(got, vals, strict=True):
            assert abs(glp - rlp) < TOL
            assert gid in ids or abs(glp - vals[-1]) < TOL  # ids equal unless logprobs tie
