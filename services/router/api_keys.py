"""Who may call the router: its API keys, and how many requests each may have in flight.

Keys come from `--api-key` (repeatable), `$TANDEM_API_KEY` (comma-separated) and
`--api-keys-file` (one a line; lines starting with `#` are comments). A file or the
environment keeps them off the command line, where any local user could read them.

The per-key limit is on concurrent requests, as LiteLLM's `max_parallel_requests` and
OpenAI's own concurrency tiers do, rather than on a rate: a stream of 2,000 tokens weighs on
the cluster for its whole life, and a count of what is in flight sees that where a request
rate does not. The admission limit (admission.py) protects the cluster; this one keeps one
caller from taking all of it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ApiKeys:
    keys: tuple[str, ...] = field(default=(), repr=False)
    max_requests_per_key: int | None = None  # None: no limit

    def __post_init__(self) -> None:
        if self.max_requests_per_key is not None:
            if self.max_requests_per_key < 1:
                raise ValueError("--max-requests-per-key must be at least 1")
            if not self.keys:
                raise ValueError("--max-requests-per-key needs API keys to count by")

    def match(self, given: bytes) -> int | None:
        """The index of the key `given` is, or None. Every key is compared, each in constant
        time, so how long it takes says nothing about which key came close."""
        found = None
        for i, key in enumerate(self.keys):
            if hmac.compare_digest(given, key.encode()):
                found = i
        return found


def gather_keys(flags: Iterable[str] | None, env: str | None, file: Path | None) -> tuple[str, ...]:
    """The keys of every source, each once, in the order given."""
    keys = [*(flags or ()), *(env or "").split(",")]
    if file is not None:
        keys += [line for line in file.read_text().splitlines() if not line.startswith("#")]
    return tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))
