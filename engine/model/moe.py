"""A mixture-of-experts MLP (Qwen3-MoE's and MiniMax-M2's, as transformers defines them),
with each expert's tokens run as one matrix product.

A router scores every token against every expert (a linear layer, then in float32 either
a softmax, or a sigmoid per expert whose top k are chosen by score plus a learned
correction bias but weighted by the score alone), keeps its top k, optionally
renormalised to sum to 1; each chosen expert is a SwiGLU MLP
and the token's output is the weighted sum of its experts' outputs. The (token, expert)
pairs are grouped by expert, so an expert with t tokens costs two GEMMs of t rows, never t
GEMMs of one; experts nobody chose cost nothing. The outputs are summed into each token's
row expert by expert in ascending order, as transformers does, so float32 results match.
Where torch's grouped GEMM runs (a CPU, or CUDA from Ampere in bfloat16) all experts' GEMMs
are two calls; elsewhere a loop over the experts chosen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.ops import TorchOps


class SparseMoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, inter, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        # the experts this rank computes (all of them but under expert parallelism)
        self.first_expert, local = cfg.first_expert, cfg.local_experts or e
        self.router_weight = nn.Parameter(torch.empty(e, h), requires_grad=False)
        self.correction_bias = (
            nn.Parameter(torch.empty(e, dtype=torch.float32), requires_grad=False)
            if cfg.router_scoring == "sigmoid"
            else None
        )
        # each expert's gate|up and down, stacked: [experts, 2 x inter, h], [experts, h, inter]
        self.gate_up = nn.Parameter(torch.empty(local, 2 * inter, h), requires_grad=False)
        self.down = nn.Parameter(torch.empty(local, h, inter), requires_grad=False)

    def forward(self, h: torch.Tensor, ops: TorchOps) -> torch.Tensor:
        """h: [n, hidden] (normed) -> the MLP's output [n, hidden]."""
        weights, experts = self.route(h, ops)
        if self.first_expert:  # a rank's share: the others' fall outside [0, local)
            experts = experts - self.first_expert
        return grouped_experts(h, experts, weights, self.gate_up, self.down, ops)

    def route(self, h: torch.Tensor, ops: TorchOps) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's top-k experts' weights and ids, [n, k] each. The weights in the
        dtype transformers weighs experts in: h's after a softmax, float32 after sigmoids."""
        logits = ops.linear(h, self.router_weight)
        if self.correction_bias is None:
            top, ids = torch.softmax(logits, dim=-1, dtype=torch.float32).topk(self.top_k, dim=-1)
        else:
            scores = torch.sigmoid(logits.float())
            ids = (scores + self.correction_bias).topk(self.top_k, dim=-1).indices
            top = scores.gather(1, ids)
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return (top, ids) if self.correction_bias is not None else (top.to(logits.dtype), ids)


def grouped_experts(
    h: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    ops: TorchOps,
) -> torch.Tensor:
    """sum over k of weights[:, k] x expert experts[:, k](h), each expert's tokens at once;
    ids outside [0, len(gate_up)) are other ranks' experts (expert parallelism): skipped."""
    k, local = experts.shape[1], gate_up.shape[0]
    flat = experts.flatten()
    order = flat.argsort(stable=True)  # (token, slot) pairs, by expert
    first = int((flat < 0).sum())  # pairs of experts before this rank's come first
    counts = torch.bincount(flat[(flat >= 0) & (flat < local)], minlength=local)
    pairs = order[first : first + int(counts.sum())]  # this rank's, by expert
    out = torch.zeros_like(h)
    if not len(pairs):
        return out
    tokens = pairs // k
    if grouped_mm_fits(h, gate_up, down):
        # every expert's two GEMMs in two calls: torch's grouped GEMM (CUTLASS on CUDA)
        offs = counts.cumsum(0).to(torch.int32)  # where each expert's rows end
        x = F.grouped_mm(h[tokens], gate_up.transpose(1, 2), offs=offs)
        y = F.grouped_mm(ops.silu_and_mul(x), down.transpose(1, 2), offs=offs)
    else:
        y = torch.cat(
            [
                ops.linear(ops.silu_and_mul(ops.linear(h[rows], gate_up[e])), down[e])
                for e, rows in enumerate(tokens.split(counts.tolist()))
                if len(rows)
            ]
        )
    # weighted in the weights' dtype, rounded to h's once (transformers' order); the rows
    # go in by expert, ascending, as transformers sums them (index_add_ on a CPU adds in
    # index order)
    out.index_add_(0, tokens, (y * weights.flatten()[pairs, None]).to(out.dtype))
    return out


def grouped_mm_fits(h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> bool:
    """Where torch's grouped GEMM runs these experts: on a CPU in float32 or bfloat16, on
    CUDA in bfloat16 from compute capability 8.0 (Ampere); rows 16-byte aligned."""
    if h.device.type == "cuda":
        ok = h.dtype == torch.bfloat16 and torch.cuda.get_device_capability(h.device) >= (8, 0)
    else:
        ok = h.device.type == "cpu" and h.dtype in (torch.float32, torch.bfloat16)
    row_bytes = (gate_up.shape[-1] * gate_up.element_size(), down.shape[-1] * down.element_size())
    return ok and h.dtype == gate_up.dtype and all(b % 16 == 0 for b in row_bytes)
