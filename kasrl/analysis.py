"""Cost of a solved kernel at a placement: analytic (from the IR) and measured.

FLOPs follow :class:`torch.utils.flop_counter.FlopCounterMode`: a
multiply-add counts 2, and only convolutions and matrix products are counted
(element-wise work, pooling, softmax and data movement count 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from kasrl.ir.graph import KernelGraph, poly_terms
from kasrl.solver.budget import Placement, conv3x3_flops, conv3x3_params
from kasrl.solver.numeric import NumericModel

__all__ = ["analytic_cost", "measured_cost", "cost_report"]


def analytic_cost(graph: KernelGraph, p: Placement) -> tuple:
    """``(flops per sample, parameters)`` of a solved kernel at ``p``, from its formulas."""
    num = _numeric_model(p)
    w = {s: (c.ratio, c.exp) for s, c in (graph.sizes or {}).items()}
    flops = num.poly(poly_terms(graph.constraints.flops), w)[0]
    params = num.poly(poly_terms(graph.constraints.params), w)[0]
    return int(flops), int(params)


_MODELS: dict = {}


def _numeric_model(p: Placement) -> NumericModel:
    """Exact integer evaluation at ``p``, with each monomial compiled once (cached per placement)."""
    hit = _MODELS.get(p)
    if hit is None:
        if len(_MODELS) > 64:
            _MODELS.clear()
        hit = _MODELS[p] = NumericModel((p,), ())
    return hit


def measured_cost(module: nn.Module, p: Placement, batch: int = 1) -> tuple:
    """``(flops per sample, parameters)`` measured with ``FlopCounterMode`` on a forward pass."""
    x = torch.zeros(batch, p.c, p.h, p.w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // batch, sum(t.numel() for t in module.parameters())


def cost_report(graph: KernelGraph, p: Placement) -> dict:
    """Analytic FLOPs/params and their ratios to a 3x3 convolution at ``p``."""
    flops, params = analytic_cost(graph, p)
    return {
        "flops": flops,
        "params": params,
        "flops_ratio": flops / conv3x3_flops(p),
        "params_ratio": params / conv3x3_params(p),
        "conv_flops": conv3x3_flops(p),
        "conv_params": conv3x3_params(p),
    }
