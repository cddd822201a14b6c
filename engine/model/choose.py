"""Which GEMM serves which step, chosen at start-up by measuring here (a CPU's kernels win
and lose by machine, not by rule). Layered, each layer taking the rows it wins and
passing the rest down:

    GGUF blocks (rows <= q)  ->  bf16 panels (rows <= p)  ->  oneDNN packed  ->  F.linear
    (quant.py)                  (panels.py)                  (onednn.py)        (or float32
                                                                                 upcast: gemm.py)
"""

from __future__ import annotations

import logging
import time
from typing import cast

import torch

from engine.model import onednn, panels
from engine.model.gemm import UpcastLinear, choose_upcast_rows
from engine.model.llama import DecoderLayer, LlamaModel
from engine.model.ops import NativeOps
from engine.model.probe import fastest
from engine.model.quant import QuantLinear, choose_quant_rows

log = logging.getLogger(__name__)


def choose_gemms(model: LlamaModel, bf16_panels: bool) -> None:
    """Set `model.ops.linear` to the fastest GEMMs here (eager steps and a compiled decode
    step alike: engine/compiled.py traces the chain), and drop a GGUF's blocks where no
    GEMM reads them. `bf16_panels`: our panel kernel is built (engine.kernels.cpu)."""
    param = next(model.parameters())
    upcast_rows = choose_upcast_rows(_layers(model)[0].widest_weight)
    if upcast_rows is not None:
        model.ops.linear = UpcastLinear(upcast_rows)
        log.info("bfloat16 GEMMs of %d rows or more run in float32 here", upcast_rows)
    packable = param.device.type == "cpu" and onednn.packable(param.dtype)
    if packable and upcast_rows is None:
        packed = _packed_linear(model)
        if packed is not None:
            model.ops.linear = packed
    native = isinstance(model.ops, NativeOps)
    if native and bf16_panels and param.dtype == torch.bfloat16 and upcast_rows is None:
        panel = _panel_linear(model)
        if panel is not None:
            model.ops.linear = panel
    if model.quantized:  # a GGUF's blocks: kept only where the GEMMs read them
        quant = _quant_linear(model) if native else None
        if quant is None:
            model.quantized.clear()
        else:
            model.ops.linear = quant


def _layers(model: LlamaModel) -> list[DecoderLayer]:
    return [cast(DecoderLayer, layer) for layer in model.layers]


def _head(model: LlamaModel) -> torch.Tensor:
    return model.lm_head if model.lm_head is not None else model.embed


def _packed_linear(model: LlamaModel) -> onednn.PackedLinear | None:
    """GEMMs in the model's dtype through oneDNN on packed copies of the weights, where
    that measures faster than F.linear here (engine/model/onednn.py); None where not."""
    layers = _layers(model)
    start = time.perf_counter()
    if not onednn.packs_faster([layer.widest_weight for layer in layers[:10]]):
        log.info("GEMMs run on F.linear: oneDNN's packed weights measured no faster here")
        return None
    weights = [_head(model)] + [w for layer in layers for w in layer.dense_weights()]
    linear = onednn.PackedLinear({id(w): onednn.pack(w) for w in weights}, model.ops.linear)
    took = time.perf_counter() - start
    log.info("GEMMs run on oneDNN, weights packed (measured and packed in %.1f s)", took)
    return linear


def _panel_linear(model: LlamaModel) -> panels.PanelLinear | None:
    """A decode batch's GEMMs on our bf16 panel kernel (engine/model/panels.py) up to the
    row count where it measures faster than the GEMM below it, probed over ten layers'
    weights (a step's mix of shapes, out of cache); the vocabulary head joins only where it
    measures faster on its own (one wide GEMM streams memory differently). None where the
    panels never win."""
    start = time.perf_counter()
    layer_weights = [w for layer in _layers(model) for w in layer.dense_weights()]
    weights = [w for w in layer_weights if panels.eligible(w)]
    probe = [(w, panels.pack(w)) for w in weights[: 4 * 10]]
    rows, prefetch = panels.choose(probe, model.ops.linear) if probe else (0, False)
    if rows == 0:
        log.info("GEMMs skip the bf16 panels: they measured no faster here")
        return None
    packed = {id(w): p for w, p in probe}  # the probe's panels are kept, not redone
    packed.update((id(w), panels.pack(w)) for w in weights[len(probe) :])
    head = _head(model)
    if panels.eligible(head):
        head_panels = panels.pack(head)
        if _panels_win(head, head_panels, model.ops.linear, min(rows, 32), prefetch):
            packed[id(head)] = head_panels
    took = time.perf_counter() - start
    log.info(
        "GEMMs of up to %d rows run on bf16 panels%s, the next panel prefetched %s "
        "(measured and packed in %.1f s)",
        rows, ", the vocabulary head too" if id(head) in packed else "",
        "by hand" if prefetch else "by the hardware alone", took,
    )  # fmt: skip
    return panels.PanelLinear(packed, rows, model.ops.linear, prefetch)


def _panels_win(
    weight: torch.Tensor, p: torch.Tensor, fallback: panels.Linear, rows: int, prefetch: bool
) -> bool:
    """Whether `weight`'s panels `p` beat `fallback` at `rows` rows."""
    x = torch.randn(rows, weight.shape[1]).to(torch.bfloat16)
    ours, theirs = fastest([lambda: panels.linear(x, p, prefetch), lambda: fallback(x, weight)], 3)
    return ours < theirs


def _quant_linear(model: LlamaModel) -> QuantLinear | None:
    """GEMMs from the GGUF blocks (engine/model/quant.py) up to the row count where they
    measure faster than the dense GEMM here, on the layers' gate|up projections; None
    where they never do."""
    params = dict(model.named_parameters())
    names = [f"layers.{i}.gate_up_weight" for i in range(len(model.layers))]
    # ten layers' worth: more than a CPU's last-level cache, a third of the probing time
    probe = [(params[n], model.quantized[n]) for n in names if n in model.quantized][:10]
    start = time.perf_counter()
    rows = choose_quant_rows(probe, model.ops.linear) if probe else 0
    took = time.perf_counter() - start
    if rows == 0:
        log.info("GEMMs run on dense weights: the GGUF's blocks measured no faster here")
        return None
    log.info("GEMMs of up to %d rows read the GGUF's blocks (measured in %.1f s)", rows, took)
    weights = {id(params[name]): q for name, q in model.quantized.items()}
    return QuantLinear(weights, rows, model.ops.linear)
