"""Redundancy rules: compositions the masks reject because they are identities, overflow or waste.

A primitive applied right after another on the same branch is rejected when the
pair computes nothing the space could not express more cheaply, or breaks:

==============================================  ========================================
pair (producer, then next on its output)        why
==============================================  ========================================
activation f, then the same activation f        idempotent (relu) or a wasted op
exp, then exp                                   overflows: ``exp(exp(x))`` is inf for x > 6.5
abs, then abs; neg, then neg                    identities
a non-negative output, then abs                 identity (relu, sigmoid, softmax, exp, square, sqrt|x|)
scale on a slot, then scale on the same slot    two learned multiplies are one
shift on an axis, then shift on the same axis   composes into one shift (or none)
softmax on a slot, then softmax on the same     a near-constant output
mix on a slot, then mix on the same slot        two linear maps of one axis are one
==============================================  ========================================

and a binary element-wise op on two branches that hold the same tensor (copies
made by forks and not changed since): ``x - x`` is zero, ``x + x`` and ``x * x``
waste an op, ``max(x, x)`` is ``x``. (A batched matmul of a tensor with itself,
attention-like, is allowed.) A group of size 1 is ruled out by the group
primitive itself (its group count must be at least 2, see
:class:`kasrl.ir.primitives.Group`).

These are structural rules on the graph, so they never make a state
unfinishable: the finishing step adds only folds, adds and a projection.
"""

from __future__ import annotations

from kasrl.ir.primitives import Primitive

__all__ = ["redundant_after", "NON_NEGATIVE"]

#: Outputs that are never negative (so ``abs`` of them is the identity).
NON_NEGATIVE = {("activation", "relu"), ("activation", "sigmoid"), ("elementwise", "abs"), ("elementwise", "exp"),
                ("elementwise", "square"), ("elementwise", "sqrtabs")}

_SAME_SLOT = {"scale": "slot", "softmax": "slot", "mix": "slot", "shift": "axes"}


def _fn(p: Primitive) -> tuple:
    return (p.family, p.attrs.get("fn"))


def redundant_after(prev: Primitive | None, nxt: Primitive) -> bool:
    """True when applying ``nxt`` to the output of ``prev`` is rejected (see the module docstring).

    >>> from kasrl.ir.primitives import Activation, Elementwise
    >>> redundant_after(Elementwise(fn="exp"), Elementwise(fn="exp")), redundant_after(Activation(fn="relu"), Elementwise(fn="abs"))
    (True, True)
    >>> redundant_after(Activation(fn="relu"), Activation(fn="gelu"))
    False
    """
    if prev is None or prev.family != nxt.family and not (nxt.family == "elementwise" and nxt.attrs.get("fn") == "abs"):
        return False
    family = nxt.family
    if family == "activation":
        return prev.attrs["fn"] == nxt.attrs["fn"]
    if family == "elementwise":
        fn = nxt.attrs["fn"]
        if fn == "abs" and (_fn(prev) in NON_NEGATIVE or prev.family == "softmax"):
            return True
        return prev.family == "elementwise" and prev.attrs["fn"] == fn and fn in ("exp", "abs", "neg")
    key = _SAME_SLOT.get(family)
    return key is not None and prev.attrs[key] == nxt.attrs[key]
