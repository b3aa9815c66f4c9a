"""Placeholders: where kernels go inside any ``nn.Module``.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
>>> replace_convs_with_placeholders(net)
['0']
>>> record_placements(net, torch.zeros(1, 8, 10, 12))
{'0': Placement(c=8, h=10, w=12)}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from kasrl.codegen.module import build_module
from kasrl.errors import KasrlError
from kasrl.ir.graph import KernelGraph
from kasrl.solver.budget import Placement

__all__ = ["Placeholder", "replace_convs_with_placeholders", "record_placements", "fill_placeholders", "placeholders"]


class Placeholder(nn.Module):
    """Marks where a kernel goes.

    Until a kernel is put in, it computes what the layer it replaced computed
    (``original``), so the network is still the baseline. ``placement`` is the
    ``(C, H, W)`` recorded by :func:`record_placements`.
    """

    def __init__(self, channels: int, original: nn.Module | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.original = original
        self.kernel: nn.Module | None = None
        self.placement: Placement | None = None
        self._recording = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's output, or the replaced convolution's until a kernel is set."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise KasrlError(f"placeholder expects [N, {self.channels}, H, W] input, got {list(x.shape)}")
        if self._recording:
            self.placement = Placement(int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        if self.kernel is not None:
            return self.kernel(x)
        if self.original is not None:
            return self.original(x)
        return x

    def extra_repr(self) -> str:
        """What fills the placeholder, for ``print(model)``."""
        filled = "kernel" if self.kernel is not None else ("original" if self.original is not None else "identity")
        return f"channels={self.channels}, placement={self.placement}, computes={filled}"


def _is_replaceable_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (3, 3)
        and m.stride == (1, 1)
        and m.in_channels == m.out_channels
        and m.groups == 1
        and m.dilation == (1, 1)
        and m.padding in ((1, 1), "same")
        and m.padding_mode == "zeros"
    )


def replace_convs_with_placeholders(model: nn.Module, predicate: Callable[[str, nn.Module], bool] | None = None) -> list:
    """Swap shape-preserving 3x3 convolutions (stride 1, C in = C out) for placeholders.

    Args:
        model: any module; changed in place.
        predicate: optional ``(name, conv) -> bool`` to choose among them.

    Returns:
        The dotted names of the replaced layers, in module order.
    """
    names = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _is_replaceable_conv(child) and (predicate is None or predicate(full, child)):
                setattr(module, child_name, Placeholder(child.in_channels, child))
                names.append(full)
    return names


def placeholders(model: nn.Module) -> dict:
    """Dotted name -> :class:`Placeholder`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Placeholder)}


@torch.no_grad()
def record_placements(model: nn.Module, example: torch.Tensor) -> dict:
    """Run one forward pass and return each placeholder's ``(C, H, W)``.

    Raises:
        KasrlError: when the model has no placeholder or one is never reached.
    """
    phs = placeholders(model)
    if not phs:
        raise KasrlError("the model has no placeholder; call replace_convs_with_placeholders first")
    was_training = model.training
    model.eval()
    for p in phs.values():
        p._recording = True
    try:
        model(example)
    finally:
        for p in phs.values():
            p._recording = False
        model.train(was_training)
    missing = [n for n, p in phs.items() if p.placement is None]
    if missing:
        raise KasrlError(f"placeholder {missing[0]} was not reached by the forward pass")
    return {n: p.placement for n, p in phs.items()}


def fill_placeholders(model: nn.Module, build: Callable[[Placement], nn.Module] | KernelGraph) -> int:
    """Put a kernel, built for each placeholder's placement, into every placeholder.

    Args:
        model: a model with recorded placements.
        build: a solved :class:`~kasrl.ir.graph.KernelGraph`, or any
            ``placement -> nn.Module`` function.

    Returns:
        The number of placeholders filled.

    Raises:
        KasrlError: when placements were not recorded yet.
    """
    if isinstance(build, KernelGraph):
        graph = build
        build = lambda p: build_module(graph, p.c, p.h, p.w)  # noqa: E731
    phs = placeholders(model)
    for name, p in phs.items():
        if p.placement is None:
            raise KasrlError(f"placeholder {name} has no placement; call record_placements first")
        p.kernel = build(p.placement)
    return len(phs)
