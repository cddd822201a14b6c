"""The router's process entry: its event loop is uvloop's."""

from __future__ import annotations

import asyncio

from services.router.server import run_on_uvloop


def test_run_on_uvloop_runs_the_coroutine_on_uvloop() -> None:
    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert run_on_uvloop(loop_module()).startswith("uvloop")
