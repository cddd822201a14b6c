"""The C++ kernels' build lock (engine/kernels/cpu.py): a build killed half-way must not
leave every later start waiting on torch's `lock` file for ever."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from engine.kernels.cpu import build_lock


def test_a_lock_file_no_live_builder_holds_is_removed(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("")  # what torch's builder leaves when killed
    with build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()


def test_a_live_builder_is_waited_for(tmp_path: Path) -> None:
    """While another builder holds the flock, its `lock` file is its own: the next
    builder waits for it to finish instead of removing it."""
    (tmp_path / "lock").write_text("")
    holder = open(tmp_path / "tandem.flock", "w")  # noqa: SIM115 - closed by the thread
    fcntl.flock(holder, fcntl.LOCK_EX)
    events: list[str] = []

    def finish_build() -> None:
        time.sleep(0.3)
        (tmp_path / "lock").unlink()
        events.append("built")
        holder.close()  # releases the flock

    t = threading.Thread(target=finish_build)
    t.start()
    with build_lock(tmp_path):
        events.append("entered")
    t.join(timeout=5)
    assert events == ["built", "entered"]
