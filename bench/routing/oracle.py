"""The oracle's prefix-cache hit rate: the best any routing could do on a workload.

One unbounded cache shared by every worker, filled in arrival order: a request hits the
longest leading run of its full blocks (engine.hashing.chain_hashes at the cluster's block
size) that any earlier prompt computed, capped as the engine caps it (a prompt must
compute its last token, so at most (len - 1) // block_size blocks hit). Token-weighted:

    hit rate = sum(cached tokens) / sum(prompt tokens)

Chained hashes name a block and everything before it, so "seen before" is already a prefix
test. Generated tokens never count: prefill workers do not see them.

`pooled_lru_hit_rate` is a second reference, not a bound: the same, but the cache holds only
the whole pool's blocks (workers x blocks each) and evicts like a worker's block pool
(least recently used first; a prompt's last block before its first). What a router that
never duplicated a block and never traded a hit for load would get with this memory; the
distance from it to the oracle is what the cluster's memory costs, whatever the routing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable, Sequence

from engine.hashing import chain_hashes


def cached_blocks(
    hashes: Sequence[int], seen: Container[int], prompt_len: int, block_size: int
) -> int:
    """Leading blocks of one prompt an unbounded cache holding `seen` would serve."""
    cap = max(0, (prompt_len - 1) // block_size)
    n = 0
    for h in hashes[:cap]:
        if h not in seen:
            break
        n += 1
    return n


def oracle_hit_rate(prompts: Iterable[Sequence[int]], block_size: int) -> float:
    seen: set[int] = set()
    cached = total = 0
    for prompt in prompts:
        hashes = chain_hashes(prompt, block_size)
        cached += cached_blocks(hashes, seen, len(prompt), block_size) * block_size
        total += len(prompt)
        seen.update(hashes)
    return cached / total if total else 0.0


def pooled_lru_hit_rate(prompts: Iterable[Sequence[int]], block_size: int, blocks: int) -> float:
    cache: OrderedDict[int, None] = OrderedDict()  # eviction order: head first
    cached = total = 0
    for prompt in prompts:
        hashes = chain_hashes(prompt, block_size)
        cached += cached_blocks(hashes, cache.keys(), len(prompt), block_size) * block_size
        total += len(prompt)
        for h in reversed(hashes):  # freed in reverse: the first block is evicted last
            cache[h] = None
            cache.move_to_end(h)
        while len(cache) > blocks:
            cache.popitem(last=False)
    return cached / total if total else 0.0
