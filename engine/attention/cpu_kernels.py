"""Our C++ CPU kernels, compiled on first use with torch's extension builder and cached
(in ~/.cache/torch_extensions). Loading is explicit and reported: a machine without a
compiler gets a warning naming the reason and the pure-torch path, never a silent switch."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)
_SRC = Path(__file__).parent / "csrc" / "paged_decode.cpp"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@functools.cache
def load() -> ModuleType | None:
    """The compiled module, or None (with a logged warning) when it cannot be built."""
    from torch.utils.cpp_extension import load as build

    # AVX2+FMA where the CPU has them; the build is cached per flag set, so a cached
    # binary is never run on a CPU that lacks its instructions.
    wide = {"avx2", "fma"} <= _cpu_flags()
    # -fopenmp: at::parallel_for is inlined here and splits work with OpenMP pragmas.
    flags = ["-O3", "-ffast-math", "-fopenmp"] + (["-mavx2", "-mfma"] if wide else [])
    try:
        return build(
            name="tandem_cpu_kernels" + ("_avx2" if wide else ""),
            sources=[str(_SRC)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # compiler missing, headers missing, build error
        log.warning("tandem C++ CPU kernels unavailable (%s); using the pure-torch decode path", e)
        return None
