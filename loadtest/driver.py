"""Drives one workload: releases its sessions at their offsets, keeps at most `concurrency`
requests in flight, and stops when every session is done or `stop` is set.

Requests still in flight when `stop` is set are cancelled and counted as such, not as
failures (the server did nothing wrong); sessions not yet released are never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loadtest.body import BodyMaker, Message
from loadtest.client import Client
from loadtest.datasets import Session
from loadtest.records import RequestOutput


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    sessions: Sequence[Session]
    offsets: Sequence[float]  # seconds after the start, one per session
    concurrency: int | None
    client: Client
    bodies: BodyMaker


@dataclass(slots=True)
class Driven:
    outputs: list[RequestOutput] = field(default_factory=list)
    sent: int = 0
    end: float = 0.0  # when the last request finished, or when it was stopped

    @property
    def cancelled(self) -> int:
        return self.sent - len(self.outputs)


async def drive(
    plan: Plan, stop: asyncio.Event, on_done: Callable[[RequestOutput], None] = lambda _: None
) -> Driven:
    driven = Driven()
    slots = asyncio.Semaphore(plan.concurrency) if plan.concurrency else None

    async def run_session(session: Session) -> None:
        history: list[Message] = []
        for turn in session.turns:
            if session.conversation:
                user = {"role": "user", "content": str(turn.prompt)}
                body = plan.bodies.conversation([*history, user], turn.output_len)
            else:
                body = plan.bodies.single(turn.prompt, turn.output_len)
            async with slots or contextlib.nullcontext():
                driven.sent += 1
                out = await plan.client.send(plan.bodies.path, body, plan.name, turn.input_len)
            driven.outputs.append(out)
            on_done(out)
            if not out.success:
                return  # the rest of a broken conversation would not be the same test
            if session.conversation:
                history += [user, {"role": "assistant", "content": out.generated_text}]

    async def release() -> None:
        t0 = time.perf_counter()
        tasks = []
        for session, at in zip(plan.sessions, plan.offsets, strict=True):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run_session(session)))
        await asyncio.gather(*tasks)  # cancelling this cancels them all

    main, stopper = asyncio.create_task(release()), asyncio.create_task(stop.wait())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (main, stopper):
        task.cancel()
    await asyncio.gather(main, stopper, return_exceptions=True)
    driven.end = time.perf_counter()
    if not main.cancelled() and main.exception() is not None:
        raise main.exception()  # type: ignore[misc]  # a bug here, not a failed request
    return driven
