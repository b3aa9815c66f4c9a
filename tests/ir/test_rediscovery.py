"""Known kernels expressed with kasrl primitives match their PyTorch references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kasrl.codegen.module import build_module
from tests.helpers import P, build

CONV = [("unfold", (0,), dict(axes="HW", k=3, dilation=1)), ("projection", (0,), dict(out="C", grouped=False))]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_unfold_plus_projection_is_a_3x3_convolution():
    g = build(CONV, solve_at=[P(8, 9, 7)])
    m = build_module(g, 8, 9, 7)
    x = torch.randn(2, 8, 9, 7)
    w = m.weight2.detach().reshape(8, 8, 3, 3)
    assert _rel(m(x), F.conv2d(x, w, padding=1)) < 1e-5


def test_depthwise_separable_convolution():
    steps = [("conv", (0,), dict(kh=3, kw=3, dilation=1, out="depthwise")), ("projection", (0,), dict(out="C", grouped=False))]
    g = build(steps, solve_at=[P(12, 6, 6)])
    m = build_module(g, 12, 6, 6)
    x = torch.randn(2, 12, 6, 6)
    ref = F.conv2d(F.conv2d(x, m.weight1.detach(), padding=1, groups=12), m.weight2.detach())
    assert _rel(m(x), ref) < 1e-5


def test_grouped_convolution():
    steps = [("group", (0,), {}), ("unfold", (0,), dict(axes="HW", k=3, dilation=1)), ("projection", (0,), dict(out="C", grouped=True))]
    g = build(steps)
    # pin the group count to 4 (a constant) at C = 16
    from kasrl.ir.sizes import SizeChoice

    g.sizes = {3: SizeChoice(False, 2)}
    m = build_module(g, 16, 5, 5)
    x = torch.randn(2, 16, 5, 5)
    w = m.weight3.detach().reshape(16, 4, 3, 3)
    assert _rel(m(x), F.conv2d(x, w, padding=1, groups=4)) < 1e-5


def test_attention_like_kernel_runs_forward_and_backward():
    steps = [
        ("fork", 0),
        ("fork", 0),
        ("projection", (0,), dict(out="new", grouped=False)),  # queries  [1, x0, 1, 1, H, W]
        ("projection", (1,), dict(out="new", grouped=False)),  # keys     [1, x1, 1, 1, H, W]
        ("unfold", (1,), dict(axes="HW", k=3, dilation=1)),  # local keys [1, x1, 3, 3, H, W]
        ("bmm", (0, 1), dict(contract="C", softmax=True)),  # scores: softmax over the 3x3 window
        ("unfold", (1,), dict(axes="HW", k=3, dilation=1)),  # local values [1, C, 3, 3, H, W]
        ("bmm", (0, 1), dict(contract="KHKW", softmax=False)),  # weighted sum -> [1, C, 1, 1, H, W]
    ]
    g = build(steps, solve_at=[P(16, 8, 8), P(32, 4, 4)])
    assert g.is_finished
    assert len(g.constraints.equal) == 1  # queries and keys were identified (x0 == x1)
    m = build_module(g, 16, 8, 8)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = m(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # the attention weights over each 3x3 window sum to one: attend to a constant value
    ones = torch.ones(1, 16, 8, 8)
    inner = build_module(g, 16, 8, 8)
    inner.load_state_dict(m.state_dict())
    out = inner(ones)
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.ones_like(out[..., 1:-1, 1:-1]) * (1 / 3.0), atol=1e-5)
