"""A small Dockerfile reader for the deploy tests: instructions (line continuations joined,
comments dropped), stages, ARG/ENV values and exec-form commands. Enough for what the
tests check; not a full implementation of Docker's grammar (no heredocs, no escape
directive)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuations joined with a space
    line: int  # where it starts (1-based)

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/RUN's exec form, else None (shell form)."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def pairs(self) -> dict[str, str | None]:
        """ENV/ARG/LABEL as name -> value (None: an ARG without a default)."""
        words = shlex.split(self.args)
        if self.keyword == "ENV" and len(words) >= 2 and "=" not in words[0]:
            return {words[0]: " ".join(words[1:])}  # the legacy `ENV NAME value` form
        out: dict[str, str | None] = {}
        for w in words:
            name, eq, value = w.partition("=")
            out[name] = value if eq else None
        return out


@dataclass(slots=True)
class Stage:
    base: str  # the image (or earlier stage) it starts from
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str | None]:
        """This stage's ARG defaults (what ${NAME} means in it without --build-arg)."""
        out: dict[str, str | None] = {}
        for i in self.all("ARG"):
            out.update(i.pairs())
        return out


@dataclass(slots=True)
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def runs(self) -> list[str]:
        return [i.args for s in self.stages for i in s.all("RUN")]


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments, also inside a continuation, and blank lines
        if not pending:
            start = n
        cont = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if cont else stripped)
        if not cont:
            keyword, _, rest = " ".join(p for p in pending if p).partition(" ")
            out.append(Instruction(keyword.upper(), rest.strip(), start))
            pending = []
    assert not pending, "the file ends inside a line continuation"
    return out


def parse(path: Path) -> Dockerfile:
    found = instructions(path.read_text())
    stages: list[Stage] = []
    for i in found:
        if i.keyword == "FROM":
            words = [w for w in i.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(i)
    return Dockerfile(path, found, stages)


def expand(text: str, values: dict[str, str | None]) -> str:
    """${NAME} and $NAME replaced by the values known (others left as they are)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        value = values.get(name)
        return value if value is not None else m.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)
