"""Server-side figures from a Prometheus `/metrics` page, scraped before and after a step.

Generic: `parse_metrics` reads any exposition text into {series: value}, and `diff` gives
after - before for the named samples (a counter that went down was reset by a restart;
its delta is then its new value). `tandem_summary` reads Tandem's own counters: the prefix
cache hit rate, bytes moved over NIXL and requests by route (local vs disaggregated
prefill). A server without `/metrics` gives None, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Series = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

TANDEM_COUNTERS = (
    "tandem_requests_total",
    "tandem:prompt_tokens_total",
    "tandem:prompt_tokens_cached_total",
    "tandem:generation_tokens_total",
    "tandem_nixl_bytes_total",
    "tandem_kv_recomputed_total",
    "tandem_prefill_fallbacks_total",
)


def parse_metrics(text: str) -> dict[Series, float]:
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def series_name(series: Series) -> str:
    name, labels = series
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def diff(
    before: Mapping[Series, float], after: Mapping[Series, float], names: Iterable[str]
) -> dict[str, float]:
    wanted = set(names)
    deltas = {}
    for series, value in sorted(after.items()):
        if series[0] in wanted:
            old = before.get(series, 0.0)
            deltas[series_name(series)] = value - old if value >= old else value
    return deltas


async def scrape(
    http: httpx.AsyncClient, base_url: str, headers: dict[str, str]
) -> dict[Series, float] | None:
    try:
        r = await http.get(base_url + "/metrics", headers=headers, timeout=10.0)
        if r.status_code != 200:
            return None
        return parse_metrics(r.text)
    except (httpx.HTTPError, ValueError):  # no server metrics is not a failed test
        return None


def tandem_summary(before: Mapping[Series, float], after: Mapping[Series, float]) -> dict[str, Any]:
    deltas = diff(before, after, TANDEM_COUNTERS)
    by_name: dict[str, float] = {}
    by_route: dict[str, float] = {}
    for name, labels in after:
        if name in TANDEM_COUNTERS:
            delta = deltas[series_name((name, labels))]
            by_name[name] = by_name.get(name, 0.0) + delta
            route = dict(labels).get("route")
            if name == "tandem_requests_total" and route is not None:
                by_route[route] = by_route.get(route, 0.0) + delta
    prompt = by_name.get("tandem:prompt_tokens_total", 0.0)
    cached = by_name.get("tandem:prompt_tokens_cached_total", 0.0)
    return {
        "prefix_cache_hit_rate": cached / prompt if prompt else None,
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "nixl_bytes": by_name.get("tandem_nixl_bytes_total", 0.0),
        "requests_by_route": by_route,
        "deltas": deltas,
    }
