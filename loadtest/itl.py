"""Inter-token latencies from stream chunks, when a chunk may carry several tokens.

A server sends a chunk whenever it has text; one chunk can hold several tokens (a
multi-byte character split across tokens, a stop string held back, speculative decoding,
batched writes). The usage chunk says how many tokens there were in all (N); the chunks
with text are C. What we do:

- N == C: one token per chunk, exactly.
- N > C: each chunk gets 1 token plus a share of the N - C others, shared in proportion to
  how many tokens beyond one our tokenizer finds in the chunk's text (evenly when it
  finds none), rounded by largest remainder so the counts add up to N.
- N < C (a server that splits one token's text over chunks) or no usage: one per chunk.

Then the gap before chunk i (i >= 1) is spread evenly over its tokens: k tokens arriving
g seconds after the previous chunk are k latencies of g/k. Tokens that came with the first
token have no gap of their own, so they share the first gap. The result has N - 1 entries
adding up to (last chunk - first chunk), so mean ITL matches TPOT when the stream ends
with its last token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loadtest.records import RequestOutput

TokenCounter = Callable[[str], int]


def settle(out: RequestOutput, count_tokens: TokenCounter) -> None:
    """Fill in output_len, chunk_tokens and itls from what the stream recorded."""
    if out.usage_output_tokens is not None:
        out.output_len = out.usage_output_tokens
    else:
        out.output_len = count_tokens(out.generated_text) if out.chunk_texts else 0
    out.chunk_tokens = chunk_token_counts(out.chunk_texts, out.output_len, count_tokens)
    out.itls = token_itls(out.chunk_times, out.chunk_tokens)


def chunk_token_counts(texts: Sequence[str], total: int, count: TokenCounter) -> list[int]:
    c = len(texts)
    if total <= c:
        return [1] * c
    beyond_one = [max(1, count(t)) - 1 for t in texts]
    if sum(beyond_one) == 0:
        beyond_one = [1] * c
    return [1 + s for s in largest_remainder(total - c, beyond_one)]


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` (not all zero) into integers adding up to it."""
    w = sum(weights)
    raw = [total * x / w for x in weights]
    shares = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def token_itls(chunk_times: Sequence[float], counts: Sequence[int]) -> list[float]:
    itls: list[float] = []
    for i in range(1, len(chunk_times)):
        k = counts[i] + (counts[0] - 1 if i == 1 else 0)
        itls += [(chunk_times[i] - chunk_times[i - 1]) / k] * k
    return itls
