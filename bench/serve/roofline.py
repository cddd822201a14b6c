"""The machine's GEMM-only bound for the serve workload: the model's GEMMs timed alone, with
plain `F.linear` in each dtype, with oneDNN on packed weights (what vLLM's CPU build and
our engine use where it is faster) and, on CPUs with AVX-512 BF16, with our bf16 panel
kernel up to the rows where it beats oneDNN (engine/model/panels.py); the fastest counts.

Every linear layer of the model (q, k, v, o, gate, up, down in each of the layers, and the
LM head), each layer with weights of its own so that a decode step streams all of them
from memory as a real one does. Attention, norms, sampling and everything else count as
free: a server cannot beat this bound, only approach it.

    prompt  (one request):  all layers at M = input_len rows, LM head at M = 1 row
    decode  (one step):     all layers and the LM head at M = batch rows

A request's first output token comes out of its prefill; each later one costs one decode
step shared by the `batch` requests in it (batch = min(concurrency, requests): the
load test keeps that many in flight). So, per request,

    GEMM time = prefill_s + (output_len - 1) * decode_step_s[batch] / batch
    roofline_tok_s = output_len / GEMM time
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float32")


def roofline_tok_s(prefill_s: float, decode_step_s: float, batch: int, output_len: int) -> float:
    """Output tokens per second if only the GEMMs took time (see the module docstring)."""
    if batch < 1 or output_len < 1:
        raise ValueError(f"batch and output_len must be >= 1, got {batch}, {output_len}")
    per_request_s = prefill_s + (output_len - 1) * decode_step_s / batch
    return output_len / per_request_s


def batch_seen(concurrency: int, num_requests: int) -> int:
    return max(1, min(concurrency, num_requests))


@dataclass(frozen=True, slots=True)
class GemmTimes:
    """Seconds for one prompt's GEMMs and for one decode step at each batch size."""

    dtype: str
    prefill_s: float
    decode_step_s: dict[int, float]
    kernel: str = "F.linear"  # or "oneDNN packed", "bf16 panels + oneDNN"

    @property
    def label(self) -> str:
        return f"{self.dtype} {self.kernel}"

    def bound(self, levels: dict[int, int], output_len: int) -> dict[int, float]:
        """roofline_tok_s per concurrency; `levels` maps concurrency to its request count."""
        return {
            c: roofline_tok_s(
                self.prefill_s, self.decode_step_s[batch_seen(c, n)], batch_seen(c, n), output_len
            )
            for c, n in levels.items()
        }


def pick_faster(times: Iterable[GemmTimes], levels: dict[int, int], output_len: int) -> GemmTimes:
    """The dtype whose bound is higher at the most concurrency levels (ties: the first)."""
    ranked = list(times)
    best = {c: max(t.bound(levels, output_len)[c] for t in ranked) for c in levels}
    return max(ranked, key=lambda t: sum(t.bound(levels, output_len)[c] >= best[c] for c in best))


def linear_shapes(model: Path) -> dict[str, Any]:
    """(out, in) of each linear of one layer, the layer count and the LM head's shape."""
    from engine.model.loader import read_model_config

    cfg = read_model_config(model)
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    layer = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
    return {"layer": layer, "layers": cfg.num_layers, "lm_head": (cfg.vocab_size, h)}


def measure(
    model: Path, input_len: int, batches: Iterable[int], threads: int = 2, reps: int = 5
) -> list[GemmTimes]:
    """GemmTimes for each dtype of DTYPES and kernel (the minimum over `reps` runs after a
    warm-up)."""
    import torch

    shapes = linear_shapes(model)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        for name in DTYPES:
            dt = getattr(torch, name)
            gen = torch.Generator().manual_seed(0)
            n_layers, (vocab, hidden) = shapes["layers"], shapes["lm_head"]
            # each layer its own weights: a decode step streams them all from memory
            layers = [
                [(torch.randn(o, i, generator=gen) * 0.02).to(dt) for o, i in shapes["layer"]]
                for _ in range(n_layers)
            ]
            head = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(dt)
            for kernel in _kernels(name):
                linear = _linear(kernel, [*(w for ws in layers for w in ws), head])
                prefill = _time_gemms(linear, layers, head, input_len, 1, reps)
                decode = {
                    b: _time_gemms(linear, layers, head, b, b, reps) for b in sorted(set(batches))
                }
                out.append(GemmTimes(name, prefill, decode, kernel))
            del layers, head
    finally:
        torch.set_num_threads(old_threads)
    return out


def _kernels(dtype: str) -> list[str]:
    import torch

    from engine.kernels import cpu
    from engine.model import onednn

    if not onednn.packable(getattr(torch, dtype)):
        return ["F.linear"]
    panels = dtype == "bfloat16" and cpu.bf16_panels()
    return ["F.linear", "oneDNN packed", *(["bf16 panels + oneDNN"] if panels else [])]


def _linear(kernel: str, weights: list[Any]) -> Any:
    import torch.nn.functional as F

    if kernel == "F.linear":
        return F.linear
    from engine.model import onednn, panels

    packed = onednn.PackedLinear({id(w): onednn.pack(w) for w in weights}, F.linear)
    if kernel == "oneDNN packed":
        return packed
    ours = {id(w): panels.pack(w) for w in weights if panels.eligible(w)}
    # the rows up to which the panels win, probed as the engine probes them (ten layers)
    probe = [(w, ours[id(w)]) for w in weights[:70] if id(w) in ours]
    rows, prefetch = panels.choose(probe, packed)
    return panels.PanelLinear(ours, rows, packed, prefetch)


def _time_gemms(
    linear: Any, layers: list[list[Any]], head: Any, rows: int, head_rows: int, reps: int
) -> float:
    """Seconds for every layer's linears at `rows` rows and the LM head at `head_rows`: the
    minimum of `reps` runs after a warm-up."""
    import torch

    dt = head.dtype
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]).to(dt) for w in layers[0]}
    xh = torch.randn(head_rows, head.shape[1]).to(dt)
    took = []
    with torch.inference_mode():
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            for ws in layers:
                for w in ws:
                    linear(xs[w.shape[1]], w)
            linear(xh, head)
            took.append(time.perf_counter() - t0)
    return min(took[1:])
