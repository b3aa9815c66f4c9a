"""Tensor shapes of the kernel IR.

Every tensor inside a kernel has the same six named axes (slots), in this order::

    G   groups           (from ``group``; 1 otherwise)
    C   channels         (C, a free size, or 1 once folded)
    KH  kernel height    (from ``unfold``; 1 otherwise)
    KW  kernel width     (from ``unfold``; 1 otherwise)
    H   height           (H, or 1 once pooled)
    W   width            (W, or 1 once pooled)

An axis of size 1 is *absent*: it broadcasts in binary primitives. The batch
axis ``N`` is implicit. At run time a tensor is a 7-d ``torch.Tensor``
``[N, G, C, KH, KW, H, W]``, so every primitive states exactly which axis it
reads and writes and code generation never reshapes by element count alone.
A kernel's input and output are both ``[1, C, 1, 1, H, W]``.
"""

from __future__ import annotations

from kasrl.ir.dims import ONE, C, H, Monomial, W, product

__all__ = [
    "Shape",
    "SLOTS",
    "G_SLOT",
    "C_SLOT",
    "KH_SLOT",
    "KW_SLOT",
    "H_SLOT",
    "W_SLOT",
    "CHANNEL_SLOTS",
    "SPATIAL_SLOTS",
    "INPUT_SHAPE",
    "volume",
    "channel_volume",
    "spatial_volume",
    "format_shape",
]

Shape = tuple[Monomial, Monomial, Monomial, Monomial, Monomial, Monomial]

SLOTS = ("G", "C", "KH", "KW", "H", "W")
G_SLOT, C_SLOT, KH_SLOT, KW_SLOT, H_SLOT, W_SLOT = range(6)
CHANNEL_SLOTS = (G_SLOT, C_SLOT, KH_SLOT, KW_SLOT)
SPATIAL_SLOTS = (H_SLOT, W_SLOT)

INPUT_SHAPE: Shape = (ONE, C, ONE, ONE, H, W)


def volume(shape: Shape) -> Monomial:
    """Number of elements per sample."""
    return product(shape)


def channel_volume(shape: Shape) -> Monomial:
    """Elements of the channel part ``G*C*KH*KW``."""
    return shape[0] * shape[1] * shape[2] * shape[3]


def spatial_volume(shape: Shape) -> Monomial:
    """Elements of the spatial part ``H*W``."""
    return shape[4] * shape[5]


def format_shape(shape: Shape) -> str:
    """Printed form, e.g. ``[1, C, 3, 3, H, W]``."""
    return "[" + ", ".join(str(m) for m in shape) + "]"
