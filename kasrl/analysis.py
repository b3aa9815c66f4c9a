"""Cost of a solved kernel at a placement: analytic (from the IR) and measured.

FLOPs follow :class:`torch.utils.flop_counter.FlopCounterMode`: a
multiply-add counts 2, and only convolutions and matrix products are counted
(element-wise work, pooling, softmax and data movement count 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from kasrl.ir.graph import KernelGraph, poly_terms
from kasrl.solver.budget import Placement, conv3x3_flops, conv3x3_params
from kasrl.solver.numeric import NumericModel

__all__ = ["analytic_cost", "analytic_costs", "measured_cost", "cost_report", "cost_reports"]


def analytic_cost(graph: KernelGraph, p: Placement) -> tuple:
    """``(flops per sample, parameters)`` of a solved kernel at ``p``, from its formulas."""
    return analytic_costs(graph, (p,))[0]


def analytic_costs(graph: KernelGraph, placements: Sequence[Placement]) -> list:
    """:func:`analytic_cost` at each placement (one pass over the formulas)."""
    num = NumericModel.shared(placements)
    w = {s: (c.ratio, c.exp) for s, c in (graph.sizes or {}).items()}
    flops = num.poly(poly_terms(graph.constraints.flops), w)
    params = num.poly(poly_terms(graph.constraints.params), w)
    return [(int(f), int(q)) for f, q in zip(flops, params, strict=False)]


def measured_cost(module: nn.Module, p: Placement, batch: int = 1) -> tuple:
    """``(flops per sample, parameters)`` measured with ``FlopCounterMode`` on a forward pass."""
    x = torch.zeros(batch, p.c, p.h, p.w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // batch, sum(t.numel() for t in module.parameters())


def cost_report(graph: KernelGraph, p: Placement) -> dict:
    """Analytic FLOPs/params and their ratios to a 3x3 convolution at ``p``."""
    return _report(analytic_cost(graph, p), p)


def cost_reports(graph: KernelGraph, placements: Sequence[Placement]) -> list:
    """:func:`cost_report` at each placement (one pass over the formulas)."""
    return [_report(cost, p) for cost, p in zip(analytic_costs(graph, placements), placements, strict=False)]


def _report(cost: tuple, p: Placement) -> dict:
    flops, params = cost
    return {
        "flops": flops,
        "params": params,
        "flops_ratio": flops / conv3x3_flops(p),
        "params_ratio": params / conv3x3_params(p),
        "conv_flops": conv3x3_flops(p),
        "conv_params": conv3x3_params(p),
    }
