"""Synthetic traces in the Mooncake format, seeded: what `--dataset mooncake` replays.

    {"timestamp": 27482, "input_length": 1843, "output_length": 16, "hash_ids": [3, 4, 171, 172]}

One hash id names one 512-token block (the last one may be partial); requests that share a
hash id share that block, and shared blocks are always leading (a prefix). Each request is:

    family prefix (shared)          private tail (its own)
    [f0 f1 f2 .. f(d-1)]            [t0 .. t(k-1)]      input_length: the last block partial
     '-- the first d of family f's chain: families are picked by Zipf popularity, so a few
         prefixes are hot and a long tail is rarely seen again

or, with probability `followup`, a conversation's next turn: a recent request's full blocks
followed by new private ones (its partial last block changes, so it gets a new id).
Arrivals are a Poisson process at `rate` requests per second (timestamps in ms).

    python -m loadtest.datasets.mooncake_synth --out trace.jsonl --requests 600 --rate 4
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class SynthConfig:
    requests: int = 600
    rate: float = 4.0  # requests per second (Poisson)
    families: int = 48  # distinct shared prefixes
    zipf: float = 1.0  # family popularity ~ 1 / rank**zipf
    family_blocks: tuple[int, int] = (2, 6)  # a family's chain length, inclusive
    tail_blocks: tuple[int, int] = (1, 3)  # private blocks after the prefix, inclusive
    followup: float = 0.25  # share of requests that extend a recent one
    recent: int = 32  # a follow-up extends one of the last this many requests
    max_blocks: int = 10  # prompts are cut to this many blocks
    output_length: tuple[int, int] = (8, 24)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0 or self.rate <= 0 or self.families < 1 or self.zipf < 0:
            raise ValueError("requests >= 0, rate > 0, families >= 1 and zipf >= 0 are needed")
        for name in ("family_blocks", "tail_blocks", "output_length"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.family_blocks[0] < 1 or self.output_length[0] < 1 or self.max_blocks < 1:
            raise ValueError("family_blocks, output_length and max_blocks start at 1")
        if not 0 <= self.followup <= 1 or self.recent < 1:
            raise ValueError("followup must be in [0, 1] and recent >= 1")


def synth_trace(cfg: SynthConfig) -> list[dict[str, Any]]:
    """The trace's rows, in timestamp order."""
    rng = np.random.default_rng(cfg.seed)
    ids = iter(range(1 << 62))
    lo, hi = cfg.family_blocks
    chains = [[next(ids) for _ in range(rng.integers(lo, hi + 1))] for _ in range(cfg.families)]
    popularity = 1.0 / np.arange(1, cfg.families + 1) ** cfg.zipf
    popularity /= popularity.sum()
    gaps = rng.exponential(1.0 / cfg.rate, size=cfg.requests)
    gaps[:1] = 0.0
    rows: list[dict[str, Any]] = []
    for t in np.cumsum(gaps):
        if rows and rng.random() < cfg.followup:
            prev = rows[-int(rng.integers(1, min(cfg.recent, len(rows)) + 1))]
            head = prev["hash_ids"][: prev["input_length"] // BLOCK_TOKENS]
        else:
            chain = chains[int(rng.choice(cfg.families, p=popularity))]
            depth = len(chain) if rng.random() < 0.5 else int(rng.integers(1, len(chain) + 1))
            head = chain[:depth]
        tail = [next(ids) for _ in range(rng.integers(cfg.tail_blocks[0], cfg.tail_blocks[1] + 1))]
        hash_ids = (head + tail)[: cfg.max_blocks] or [next(ids)]
        last = int(rng.integers(BLOCK_TOKENS // 8, BLOCK_TOKENS + 1))  # the last block's tokens
        out = int(rng.integers(cfg.output_length[0], cfg.output_length[1] + 1))
        rows.append(
            {
                "timestamp": int(round(t * 1000)),
                "input_length": (len(hash_ids) - 1) * BLOCK_TOKENS + last,
                "output_length": out,
                "hash_ids": hash_ids,
            }
        )
    return rows


def write_trace(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def shared_block_share(rows: list[dict[str, Any]]) -> float:
    """Of all full 512-token blocks in the trace, the share an earlier request had: the hit
    rate of an unbounded cache at Mooncake's block granularity (a quick check of reuse)."""
    seen: set[int] = set()
    hits = total = 0
    for r in rows:
        full = r["hash_ids"][: r["input_length"] // BLOCK_TOKENS]
        hits += sum(h in seen for h in full)
        total += len(full)
        seen.update(full)
    return hits / total if total else 0.0


def _pairs(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    return int(low), int(high or low)


def _args(argv: list[str] | None) -> Iterator[tuple[str, Any]]:
    defaults = SynthConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    for name, value in asdict(defaults).items():
        kind = _pairs if isinstance(value, tuple) else type(value)
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    yield from vars(ap.parse_args(argv)).items()


def main(argv: list[str] | None = None) -> None:
    args = dict(_args(argv))
    out = args.pop("out")
    rows = synth_trace(SynthConfig(**args))
    write_trace(rows, out)
    print(f"wrote {len(rows)} requests to {out}; shared 512-token blocks: ", end="")
    print(f"{shared_block_share(rows):.1%}")


if __name__ == "__main__":
    main()
