"""Our C++ CPU kernels, compiled on first use with torch's extension builder and cached
(in ~/.cache/torch_extensions). They register as torch operators, `torch.ops.tandem.*`,
so that eager code and a compiled decode step (engine/compiled.py) call the same kernels.
Loading is explicit and reported: a machine without a compiler gets a warning naming the
reason and the pure-torch path, never a silent switch."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_CSRC = Path(__file__).parent / "csrc"
# -fopenmp: at::parallel_for is inlined here and splits work with OpenMP pragmas.
CFLAGS = ("-O3", "-ffast-math", "-fopenmp")
SOURCES = tuple(
    _CSRC / name
    for name in (
        "paged_attention.cpp",
        "paged_prefill.cpp",
        "fused_ops.cpp",
        "quant_linear.cpp",
        "quant_panels.cpp",
        "bf16_panels.cpp",
    )
)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


# The vector ISAs the kernels are built for, widest first: a build-name suffix, the CPU
# flags it needs and the compiler's. Each its own name, so a cached build never runs on a
# CPU lacking what it was built for (AVX-512 BF16 included).
_AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c")
ISAS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("_avx512bf16", frozenset({"avx512f", "avx512bw", "avx512vl", "fma", "avx512_bf16"}),
     (*_AVX512, "-mavx512bf16")),
    ("_avx512", frozenset({"avx512f", "avx512bw", "avx512vl", "fma"}), _AVX512),
    ("_avx2", frozenset({"avx2", "fma", "f16c"}), ("-mavx2", "-mfma", "-mf16c")),
    ("", frozenset(), ()),
)  # fmt: skip


def isa_flags() -> tuple[str, list[str]]:
    """The widest vector ISA this CPU has, as a build-name suffix and compiler flags."""
    cpu = _cpu_flags()
    suffix, _, flags = next(isa for isa in ISAS if isa[1] <= cpu)
    return suffix, list(flags)


@functools.cache
def load() -> bool:
    """Build (or load the cached build of) the kernels; False, with a logged warning, when
    they cannot be built."""
    from torch.utils.cpp_extension import _get_build_directory
    from torch.utils.cpp_extension import load as build

    suffix, isa = isa_flags()
    # torch's builder rebuilds when a listed source changes, not a header: the name carries
    # a digest of every file in csrc/, so an edited header builds afresh too.
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(_CSRC.iterdir()))).hexdigest()
    flags = [*CFLAGS, *isa]
    name = f"tandem_ops{suffix}_{digest[:10]}"
    try:
        build_dir = Path(_get_build_directory(name, verbose=False))  # torch's own cache path
        with build_lock(build_dir):
            build(
                name=name,
                sources=[str(p) for p in SOURCES],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,  # the library registers torch.ops.tandem.* on load
                verbose=False,
            )
    except Exception as e:  # compiler missing, headers missing, build error
        log.warning("tandem C++ CPU kernels unavailable (%s); using the pure-torch path", e)
        return False
    _register_fakes()
    return True


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Held around a build. torch's builder marks a build in progress with a `lock` file
    and waits for it to go, without end and without a word: a process killed mid-build
    left one behind, and every later worker hung at start. Our builders take this flock
    first, which the kernel releases when its holder dies, so a `lock` file found while
    holding it is stale: removed, and said so."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "tandem.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another live builder: wait for its build
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s, left by a kernel build that did not finish", stale)
            stale.unlink(missing_ok=True)
        yield


def vectorised() -> bool:
    """The kernels are built for AVX2 or wider: those that exist only in vector form
    (paged_prefill) can run."""
    return load() and isa_flags()[0] != ""


def bf16_panels() -> bool:
    """The bfloat16 panel GEMM (bf16_panels.cpp) is built: this CPU has AVX-512 BF16."""
    return load() and "-mavx512bf16" in isa_flags()[1]


def _register_fakes() -> None:
    """Shapes for tracing (torch.compile): the ops' outputs without running them."""

    @torch.library.register_fake("tandem::paged_decode")
    def _(q, kv_cache, layer, block_tables, context_lens, scale):
        return torch.empty_like(q)

    @torch.library.register_fake("tandem::paged_prefill")
    def _(q, kv_cache, layer, block_tables, starts, query_lens, context_lens, scale):
        return torch.empty_like(q)

    @torch.library.register_fake("tandem::write_kv")
    def _(kv_cache, layer, k, v, slots):
        return None

    @torch.library.register_fake("tandem::add_rms_norm")
    def _(x, delta, weight, eps):
        return torch.empty_like(x), torch.empty_like(x)

    @torch.library.register_fake("tandem::rope")
    def _(q, k, cos, sin):
        return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
            k, memory_format=torch.contiguous_format
        )

    @torch.library.register_fake("tandem::quant_linear")
    def _(x, qweight, qtype):
        return x.new_empty((x.shape[0], qweight.shape[0]))

    @torch.library.register_fake("tandem::bf16_panel_linear")
    def _(x, packed, prefetch=True):
        return x.new_empty((x.shape[0], packed.shape[0]))

    @torch.library.register_fake("tandem::silu_and_mul")
    def _(gate_up):
        return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))
