"""One scenario run's steps: build each workload's prompts and arrival times, drive them
together within the time budget, scrape the server's metrics around them, and reduce what
came back to figures.

    step k: every workload at once; the swept workload at its k-th load point, the others
            at their only one. Background workloads stop once every foreground workload is
            done; everything stops at max_duration.

Each step builds its prompts afresh from a seed of (workload seed, workload index, step), so
a step does not find the previous step's prompts in the server's prefix cache.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from loadtest.arrivals import arrival_offsets
from loadtest.body import BodyMaker
from loadtest.client import Client
from loadtest.config import LoadPoint, ScenarioConfig, Target, WorkloadConfig
from loadtest.datasets import Session, TokenizerLike, build_sessions
from loadtest.driver import Driven, Plan, drive
from loadtest.itl import settle
from loadtest.progress import progress
from loadtest.prometheus import scrape, tandem_summary
from loadtest.result import RunInfo, RunResult, compute_result

_WARMUP_STEP = 1 << 20  # the seed's step number for warm-up prompts


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int
    workloads: dict[str, RunResult]  # by workload name
    overall: RunResult  # every request of the step together
    server_metrics: dict[str, Any] | None  # for the whole step: the server cannot tell apart


class StepRunner:
    """The state one scenario run shares between its steps."""

    def __init__(
        self,
        cfg: ScenarioConfig,
        target: Target,
        model: str,
        tok: TokenizerLike,
        tok_id: str,
        label: str,
        http: httpx.AsyncClient,
        quiet: bool,
    ) -> None:
        self.cfg, self.target, self.tok, self.tok_id = cfg, target, tok, tok_id
        self.label, self.http, self.quiet = label, http, quiet
        self.client = Client(http, target.base, target.headers(), cfg.request_timeout)
        self.model = model
        self.scrape = False

    async def start(self, scrape_metrics: bool) -> None:
        if scrape_metrics:  # on when the server has /metrics
            self.scrape = (
                await scrape(self.http, self.target.base, self.target.headers()) is not None
            )

    def bodies(self, w: WorkloadConfig) -> BodyMaker:
        return BodyMaker(
            w.endpoint,
            self.model,
            self.tok,
            ignore_eos=w.ignore_eos,
            temperature=w.temperature,
            extra_body=w.extra_body,
        )

    def sessions(self, i: int, w: WorkloadConfig, step: int, limit: int | None) -> list[Session]:
        as_text = w.endpoint == "chat" or w.text_prompts
        return build_sessions(w.dataset, self.tok, as_text, _seed(w.seed, i, step), limit)

    async def warm_up(self) -> None:
        """A few requests per workload, at its first load's concurrency, left out of the figures."""
        for i, w in enumerate(self.cfg.workloads):
            if w.warmup:
                sessions = self.sessions(i, w, _WARMUP_STEP, w.warmup)
                plan = Plan(
                    w.name,
                    sessions,
                    [0.0] * len(sessions),
                    w.loads[0].concurrency,
                    self.client,
                    self.bodies(w),
                )
                await self._bounded([plan], [])

    async def step(self, k: int) -> StepResult:
        plans, loads = [], []
        for i, w in enumerate(self.cfg.workloads):
            load = w.loads[min(k, len(w.loads) - 1)]
            sessions = self.sessions(i, w, k, None)
            offsets = _offsets(sessions, load, _seed(w.seed, i, k))
            plans.append(
                Plan(w.name, sessions, offsets, load.concurrency, self.client, self.bodies(w))
            )
            loads.append(load)
        before = await self._scrape()
        t0 = time.perf_counter()
        fg = [p for p, w in zip(plans, self.cfg.workloads, strict=True) if not w.background]
        bg = [p for p, w in zip(plans, self.cfg.workloads, strict=True) if w.background]
        with progress(plans, k, self.cfg.num_steps, self.quiet) as tick:
            driven = await self._bounded(fg, bg, tick)
        after = await self._scrape()
        server = tandem_summary(before, after) if before is not None and after is not None else None
        for d in driven.values():
            for out in d.outputs:
                settle(out, lambda text: len(self.tok.encode(text)))
        return self._results(k, plans, loads, driven, t0, server)

    async def _bounded(self, fg: list[Plan], bg: list[Plan], tick: Any = None) -> dict[str, Driven]:
        """Drive foreground and background plans together, all within max_duration."""
        on_done = tick or (lambda _: None)
        stop_all, stop_bg = asyncio.Event(), asyncio.Event()
        timer = asyncio.get_running_loop().call_later(self.cfg.max_duration, stop_all.set)
        bg_tasks = [asyncio.create_task(drive(p, stop_bg, on_done)) for p in bg]
        try:
            fg_done = await asyncio.gather(*(drive(p, stop_all, on_done) for p in fg))
            stop_bg.set()
            bg_done = await asyncio.gather(*bg_tasks)
        finally:
            timer.cancel()
            stop_bg.set()
        return {p.name: d for p, d in zip(fg + bg, fg_done + bg_done, strict=True)}

    async def _scrape(self) -> Any:
        if not self.scrape:
            return None
        return await scrape(self.http, self.target.base, self.target.headers())

    def _results(
        self,
        k: int,
        plans: list[Plan],
        loads: list[LoadPoint],
        driven: dict[str, Driven],
        t0: float,
        server: dict[str, Any] | None,
    ) -> StepResult:
        goodput = {w.name: w.goodput for w in self.cfg.workloads}
        results = {}
        for plan, load, w in zip(plans, loads, self.cfg.workloads, strict=True):
            d = driven[plan.name]
            info = self._info(w.name, w.endpoint, w.dataset.name, load, _planned(plan.sessions))
            results[w.name] = compute_result(
                info, d.outputs, d.end - t0, d.cancelled, goodput, server
            )
        everything = [o for d in driven.values() for o in d.outputs]
        swept = max(zip(loads, self.cfg.workloads, strict=True), key=lambda lw: len(lw[1].loads))
        first = self.cfg.workloads[0]
        info = self._info(
            "overall",
            first.endpoint,
            first.dataset.name,
            swept[0],
            sum(_planned(p.sessions) for p in plans),
        )
        overall = compute_result(
            info,
            everything,
            max(d.end for d in driven.values()) - t0,
            sum(d.cancelled for d in driven.values()),
            goodput,
            server,
        )
        return StepResult(k, results, overall, server)

    def _info(self, name: str, endpoint: str, dataset: str, load: LoadPoint, n: int) -> RunInfo:
        return RunInfo(self.label, name, self.model, self.tok_id, endpoint, dataset, load, n)


def _offsets(sessions: list[Session], load: LoadPoint, seed: int) -> list[float]:
    if sessions and sessions[0].at is not None:  # a trace: its own times
        return [s.at or 0.0 for s in sessions]
    return arrival_offsets(len(sessions), load.request_rate, load.burstiness, seed)


def _planned(sessions: Any) -> int:
    return sum(len(s.turns) for s in sessions)


def _seed(seed: int, workload: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, workload, step]).generate_state(1)[0])
