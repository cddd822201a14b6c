"""The C++ kernels compile for every vector ISA they are built for, not only this CPU's.

A build that fails leaves the engine on the pure-torch path with a warning (engine/kernels/
cpu.py), so a CPU of another kind would lose every kernel, and a test run on one kind of
CPU builds that kind only: an intrinsic used outside its ISA's guard, or a name declared
only under one, would pass here and break elsewhere. Syntax only (`-fsyntax-only`, with
the build's flags and C++ standard): each ISA's code paths are parsed and type-checked;
nothing runs."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

from engine.kernels import cpu

VARIANTS = {suffix.strip("_") or "plain": list(flags) for suffix, _, flags in cpu.ISAS}
# this CPU's own build is load()'s, which every kernel test runs
THIS_CPU = cpu.isa_flags()[0].strip("_") or "plain"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: nothing is built here")
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != THIS_CPU])
def test_the_kernels_compile_for_every_isa(variant: str) -> None:
    includes = [a for p in include_paths() for a in ("-isystem", p)]
    includes += ["-isystem", sysconfig.get_paths()["include"]]
    base = ["c++", "-fsyntax-only", "-std=c++20", *cpu.CFLAGS, *VARIANTS[variant], *includes]
    # the files side by side: most of each one's time is parsing torch's headers
    jobs = [
        (src.name, subprocess.Popen([*base, str(src)], stderr=subprocess.PIPE, text=True))
        for src in cpu.SOURCES
    ]
    errors = {}
    for name, job in jobs:
        _, err = job.communicate(timeout=600)
        if job.returncode:
            errors[name] = err[-3000:]
    assert not errors, "\n".join(f"{name}:\n{err}" for name, err in errors.items())
