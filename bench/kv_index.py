"""KVIndex against a naive per-worker set scan, on a realistic cache.

    python -m bench.kv_index [--workers 64] [--blocks 1000000] [--prompt-tokens 4000]

The cache: `blocks` (worker, hash) entries over `workers` workers. Each worker holds
prefixes of some of the shared chains (system prompts, few-shot and document prefixes,
twice a prompt long) and fills the rest with private chains:

    shared chain s:  s0 s1 s2 ... s499      worker w holds s[:depth] for ~half the chains
    private chains:  p0 p1 ... p_k         (k random), only worker w holds them

Lookups: prompts of `prompt_tokens // block_size` hashes; 80% are the first blocks of a
shared chain (the hard case: many workers, long runs), 10% a shared prefix then a new
tail, 10% misses. The baseline walks the prompt in every worker's set.
Ingest: events are serialized into KVEventBatch bytes first (64 a batch, as workers
publish them); we time FromString + apply, first the cold build (all stored), then churn
(stored and removed mixed, against the full index). The baseline applies the same bytes
to plain per-worker sets. Writes bench-results/kv_index.json; `run()` only returns figures.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.kv.index import KVIndex
from services.pb.events_pb2 import BlockRemoved, BlockStored, KVEvent, KVEventBatch

N_SHARED = 32  # shared chains in the cluster
SHARED_FRACTION = 0.4  # of each worker's blocks
Batch = tuple[str, bytes]  # (worker id, serialized KVEventBatch)


def build_cache(
    rng: random.Random, workers: int, blocks: int, chain: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(the shared chains, each worker's hashes in chain order); `blocks` entries in all."""
    shared = [[rng.getrandbits(64) for _ in range(chain)] for _ in range(N_SHARED)]
    cache = []
    for w in range(workers):
        budget = blocks // workers + (w < blocks % workers)
        mine: list[int] = []
        for s in rng.sample(shared, N_SHARED // 2):
            room = int(budget * SHARED_FRACTION) - len(mine)
            mine += s[: max(0, min(rng.randint(chain // 4, chain), room))]
        while len(mine) < budget:
            n = min(rng.randint(16, 2 * chain), budget - len(mine))
            mine += [rng.getrandbits(64) for _ in range(n)]
        cache.append(mine)
    return shared, cache


def make_prompts(
    rng: random.Random, shared: list[list[int]], n: int, length: int
) -> list[list[int]]:
    out = []
    for _ in range(n):
        r, base = rng.random(), rng.choice(shared)
        keep = length if r < 0.8 else rng.randint(1, length) if r < 0.9 else 0
        p = base[: min(keep, len(base))]
        out.append(p + [rng.getrandbits(64) for _ in range(length - len(p))])
    return out


def naive_lookup(sets: dict[str, set[int]], hashes: Sequence[int]) -> dict[str, int]:
    out = {}
    for w, held in sets.items():
        n = 0
        for h in hashes:
            if h not in held:
                break
            n += 1
        if n:
            out[w] = n
    return out


def encode(worker: str, events: list[KVEvent]) -> Batch:
    return worker, KVEventBatch(
        worker_id=worker, seq=events[-1].seq, events=events
    ).SerializeToString()


def cold_batches(names: list[str], cache: list[list[int]], size: int) -> list[Batch]:
    out = []
    for w, hashes in zip(names, cache, strict=True):
        evs = [_stored(i + 1, h, hashes[i - 1] if i else None) for i, h in enumerate(hashes)]
        out += [encode(w, evs[i : i + size]) for i in range(0, len(evs), size)]
    return out


def churn_batches(
    rng: random.Random, names: list[str], cache: list[list[int]], n: int, size: int
) -> list[Batch]:
    """`n` events, half removed, half stored (30% of those a hash other workers hold).

    Every event changes the cache (no re-stores, no unknown removals), so the number of
    entries stays near `blocks` and ingest does the index's real work each time.
    """
    seqs = [len(c) for c in cache]
    held, held_set = [list(c) for c in cache], [set(c) for c in cache]
    popular = [h for c in cache for h in c[:8]]  # first blocks of shared chains, mostly
    out = []
    for _ in range(n // size):
        w = rng.randrange(len(names))
        mine, mine_set, evs = held[w], held_set[w], []
        for _ in range(size):
            seqs[w] += 1
            if rng.random() < 0.5 and mine:
                i = rng.randrange(len(mine))
                mine[i], mine[-1] = mine[-1], mine[i]
                h = mine.pop()
                mine_set.remove(h)
                evs.append(KVEvent(seq=seqs[w], removed=BlockRemoved(block_hash=h)))
                continue
            h = rng.choice(popular) if rng.random() < 0.3 else rng.getrandbits(64)
            if h in mine_set:
                h = rng.getrandbits(64)
            mine.append(h)
            mine_set.add(h)
            evs.append(_stored(seqs[w], h, rng.getrandbits(64)))
        out.append(encode(names[w], evs))
    return out


def _stored(seq: int, h: int, parent: int | None) -> KVEvent:
    return KVEvent(seq=seq, stored=BlockStored(block_hash=h, parent_hash=parent, block_id=seq))


def ingest(batches: list[Batch], apply: Callable[[str, Sequence[KVEvent]], None]) -> float:
    """Events per second for parse + apply."""
    start = time.perf_counter()
    n = 0
    for w, data in batches:
        events = KVEventBatch.FromString(data).events
        apply(w, events)
        n += len(events)
    return n / (time.perf_counter() - start)


def naive_apply(sets: dict[str, set[int]]) -> Callable[[str, Sequence[KVEvent]], None]:
    def apply(w: str, events: Sequence[KVEvent]) -> None:
        held = sets[w]
        for ev in events:
            kind = ev.WhichOneof("kind")
            if kind == "stored":
                held.add(ev.stored.block_hash)
            elif kind == "removed":
                held.discard(ev.removed.block_hash)
            else:
                held.clear()

    return apply


def timed_ms(fn: Callable[[list[int]], object], prompts: list[list[int]]) -> list[float]:
    out = []
    for p in prompts:
        t = time.perf_counter_ns()
        fn(p)
        out.append((time.perf_counter_ns() - t) / 1e6)
    return sorted(out)


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _ms(x: float) -> float:
    return round(x, 4)


def rss_mb() -> float:
    """Resident memory now (Linux); 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / 2**20


def run(
    workers: int = 64,
    blocks: int = 1_000_000,
    prompt_tokens: int = 4000,
    block_size: int = 16,
    seed: int = 0,
    lookups: int = 2000,
    events: int = 1_000_000,
    batch_size: int = 64,
) -> dict:
    rng = random.Random(seed)
    length = prompt_tokens // block_size
    names = [f"worker-{i}" for i in range(workers)]
    shared, cache = build_cache(rng, workers, blocks, 2 * length)
    cold = cold_batches(names, cache, batch_size)
    index, rss0 = KVIndex(), rss_mb()
    cold_rate = ingest(cold, index.apply)
    index_mb = rss_mb() - rss0
    del cold
    sets = {w: set(c) for w, c in zip(names, cache, strict=True)}
    prompts = make_prompts(rng, shared, lookups, length)
    assert all(index.lookup(p) == naive_lookup(sets, p) for p in prompts[:50])
    ours = timed_ms(index.lookup, prompts)
    naive = timed_ms(lambda p: naive_lookup(sets, p), prompts)
    hit_workers = sum(len(index.lookup(p)) for p in prompts) / len(prompts)
    churn = churn_batches(rng, names, cache, events, batch_size)
    rate = ingest(churn, index.apply)
    naive_rate = ingest(churn, naive_apply(sets))
    assert all(index.lookup(p) == naive_lookup(sets, p) for p in prompts[:50])
    return {
        "workers": workers,
        "blocks": blocks,
        "prompt_tokens": prompt_tokens,
        "block_size": block_size,
        "seed": seed,
        "lookups": lookups,
        "events": len(churn) * batch_size,
        "batch_size": batch_size,
        "num_hashes": index.num_hashes,
        "num_entries": index.num_entries,
        "mean_workers_hit": round(hit_workers, 1),
        "lookup_p50_ms": _ms(pct(ours, 0.5)),
        "lookup_p99_ms": _ms(pct(ours, 0.99)),
        "baseline_lookup_p50_ms": _ms(pct(naive, 0.5)),
        "baseline_lookup_p99_ms": _ms(pct(naive, 0.99)),
        "lookup_speedup_p99": round(pct(naive, 0.99) / pct(ours, 0.99), 1),
        "ingest_events_s": round(rate),
        "baseline_ingest_events_s": round(naive_rate),
        "cold_ingest_events_s": round(cold_rate),
        "index_rss_mb": round(index_mb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_table(r: dict) -> None:
    print(
        f"KV index: {r['workers']} workers, {r['num_entries']:,} entries "
        f"({r['num_hashes']:,} distinct hashes), prompts of {r['prompt_tokens'] // r['block_size']}"
        f" blocks, {r['mean_workers_hit']} workers hit on average"
    )
    print(f"{'':24}{'index':>14}{'naive sets':>14}{'ratio':>10}")
    for label, key, fmt in [
        ("lookup p50 (ms)", "lookup_p50_ms", ".4f"),
        ("lookup p99 (ms)", "lookup_p99_ms", ".4f"),
        ("ingest (events/s)", "ingest_events_s", ",.0f"),
    ]:
        ours, base = r[key], r[f"baseline_{key}"]
        ratio = base / ours if key.startswith("lookup") else ours / base
        print(f"{label:24}{ours:>14{fmt}}{base:>14{fmt}}{ratio:>9.1f}x")
    print(f"{'cold build (events/s)':24}{r['cold_ingest_events_s']:>14,.0f}")
    print(
        f"index memory ~{r['index_rss_mb']:.0f} MB (RSS growth), peak RSS {r['peak_rss_mb']:.0f} MB"
    )
    print("ratio: how many times better the index is (lookup: faster; ingest: events/s)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--prompt-tokens", type=int, default=4000)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    r = run(a.workers, a.blocks, a.prompt_tokens, a.block_size, a.seed, a.lookups, a.events)
    print_table(r)
    out = Path("bench-results/kv_index.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
