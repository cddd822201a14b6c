"""Structured output's cost per token: llguidance (what the engine uses, engine/guided.py)
against xgrammar where it is importable, on the default model's tokenizer.

    python -m bench.grammar_mask [--model PATH]

For each JSON schema below, both libraries follow the tokens of one valid instance (what a
model would emit) and compute the allowed-token mask before each token. Printed per
library and schema: the one-off set-up (the tokenizer's tables), the per-request start
(llguidance: a matcher from the grammar; xgrammar: compiling the schema, then a matcher),
and the mask's mean and worst time a token. xgrammar is not a dependency (it pulls in
triton); install it aside to compare, e.g. `pip install --target DIR --no-deps xgrammar
apache-tvm-ffi` and PYTHONPATH=DIR. Writes bench-results/grammar_mask.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "flat": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "likes_cats": {"type": "boolean"},
            },
            "required": ["name", "age", "likes_cats"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "likes_cats": True},
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "landmarks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
                        "required": ["name", "year"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["city", "landmarks"],
            "additionalProperties": False,
        },
        {"city": "Paris", "landmarks": [{"name": "Eiffel Tower", "year": 1889}] * 3},
    ),
}


def _ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def llguidance_run(
    tok: Any, vocab: int, eos: int, schema: dict[str, Any], ids: list[int]
) -> dict[str, float]:
    from llguidance import LLMatcher, LLTokenizer

    lt, setup = _ms(lambda: LLTokenizer(tok.backend.to_str(), n_vocab=vocab, eos_token=eos))
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    matcher, start = _ms(lambda: LLMatcher(lt, grammar))
    bits = np.zeros((vocab + 31) // 32, dtype=np.int32)
    times = []
    for t in ids:
        _, ms = _ms(lambda: matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes))
        times.append(ms)
        assert matcher.consume_token(t), matcher.get_error()
    return _row(setup, start, times)


def xgrammar_run(
    tok: Any, vocab: int, eos: int, schema: dict[str, Any], ids: list[int]
) -> dict[str, float]:
    import xgrammar as xgr

    compiler, setup = _ms(
        lambda: xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok.hf, vocab_size=vocab))
    )
    compiled, start = _ms(
        lambda: compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":")
        )
    )
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab)
    times = []
    for t in ids:
        _, ms = _ms(lambda: matcher.fill_next_token_bitmask(mask))
        times.append(ms)
        assert matcher.accept_token(t)
    return _row(setup, start, times)


def _row(setup: float, start: float, times: list[float]) -> dict[str, float]:
    return {
        "setup_ms": setup,
        "request_start_ms": start,
        "mask_mean_us": statistics.fmean(times) * 1000,
        "mask_max_us": max(times) * 1000,
        "tokens": len(times),
    }


def main(argv: list[str] | None = None) -> None:
    from engine.env import default_model_path
    from engine.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench-results/grammar_mask.json")
    args = ap.parse_args(argv)
    tok = load_tokenizer(Path(args.model) if args.model else default_model_path())
    vocab, eos = tok.vocab_size, tok.eos_token_ids[0]
    libraries: dict[str, Callable[..., dict[str, float]]] = {"llguidance": llguidance_run}
    try:
        import xgrammar  # noqa: F401

        libraries["xgrammar"] = xgrammar_run
    except ImportError:
        print("xgrammar is not importable here: llguidance alone")
    rows = []
    heads = ("set-up ms", "start ms", "mask mean us", "mask max us")
    print(f"{'library':<11} {'schema':<7} " + " ".join(f"{h:>13}" for h in heads))
    for schema_name, (schema, instance) in SCHEMAS.items():
        ids = tok.encode(json.dumps(instance, separators=(",", ":")))
        for lib, run in libraries.items():
            r = {"library": lib, "schema": schema_name, **run(tok, vocab, eos, schema, ids)}
            rows.append(r)
            figures = (r["setup_ms"], r["request_start_ms"], r["mask_mean_us"], r["mask_max_us"])
            print(f"{lib:<11} {schema_name:<7} " + " ".join(f"{v:>13.1f}" for v in figures))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
