"""A progress bar on stderr while a step runs: off with quiet, or when stderr is not a TTY."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from loadtest.driver import Plan
from loadtest.records import RequestOutput


@contextlib.contextmanager
def progress(
    plans: Sequence[Plan], step: int, steps: int, quiet: bool
) -> Iterator[Callable[[RequestOutput], None]]:
    total = sum(len(s.turns) for p in plans for s in p.sessions)
    off = quiet or not sys.stderr.isatty()
    desc = f"step {step + 1}/{steps}" if steps > 1 else "requests"
    with tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=off) as bar:

        def tick(out: RequestOutput) -> None:
            bar.update(1)
            if not out.success:
                bar.set_postfix_str(f"last failure: {out.category}", refresh=False)

        yield tick
