"""The primitive library: shape rules, costs and PyTorch lowerings.

Each primitive states, for the 6-slot layout of :mod:`kasrl.ir.shape`:

* **when it applies** and its **shape rule** (:meth:`Primitive.infer`, which
  returns ``None`` when the primitive does not apply to the given shapes);
* its **FLOPs and parameters** as monomials of the symbols (FLOPs follow
  :class:`torch.utils.flop_counter.FlopCounterMode`: a multiply-add is 2 FLOPs,
  and only contractions — convolutions and matrix products — are counted);
* its **lowering** (:meth:`Primitive.emit`): one PyTorch expression on 7-d
  tensors ``[N, G, C, KH, KW, H, W]``, used both by the in-process module and
  by the standalone source, so the two can never disagree.

=============  ======================================  ===========================
primitive      axis mapping                            lowering
=============  ======================================  ===========================
projection     (G,C,KH,KW) -> C'; groups=G if grouped  1x1 ``F.conv2d``
conv           (G,C,KH,KW) -> C' with a kh x kw window ``F.conv2d`` (dilated, same
               over (H,W); depthwise keeps the shape   padding)
mix            one slot s -> s' (same, C or free x)    ``matmul`` on that axis
scale          same shape, weight over one slot        broadcast multiply
unfold         KH (and/or KW): 1 -> k                  ``F.unfold`` + view
group          (G=1, C) -> (g, C/g)                    reshape
shift          same shape, zero-padded along H or W    ``F.pad`` + ``narrow``
fold           one slot -> 1 (mean or max)             ``mean`` / ``amax``
softmax        same shape, over one slot               ``torch.softmax``
activation     same shape                              relu/gelu/sigmoid/tanh
elementwise    same shape                              abs/exp/neg/sin/sqrtabs/sq
binary         broadcast of two tensors                + - * maximum minimum
bmm            contracts shared slots of two tensors   one batched ``matmul``
=============  ======================================  ===========================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kasrl.ir.dims import ONE, C, Monomial, free_symbol
from kasrl.ir.shape import (
    C_SLOT,
    CHANNEL_SLOTS,
    G_SLOT,
    H_SLOT,
    KH_SLOT,
    KW_SLOT,
    SLOTS,
    W_SLOT,
    Shape,
    channel_volume,
    spatial_volume,
    volume,
)

__all__ = [
    "Primitive",
    "Inference",
    "Weight",
    "PRIMITIVES",
    "primitive_from_attrs",
    "Projection",
    "Conv",
    "Mix",
    "Scale",
    "Unfold",
    "Group",
    "Shift",
    "Fold",
    "Softmax",
    "Activation",
    "Elementwise",
    "Binary",
    "BatchedMatmul",
]



@dataclass(frozen=True)
class Weight:
    """A learned tensor of a primitive: its name suffix, dims and init."""

    name: str
    dims: tuple
    init: str  # "fan_in" (uniform, like nn.Linear) or "ones"
    fan_in: Monomial = ONE


@dataclass
class Inference:
    """What applying a primitive to given input shapes produces and costs.

    Attributes:
        shape: the output shape.
        new_symbols: how many free sizes the primitive introduces (their ids are
            consecutive from the ``next_free`` passed to :meth:`Primitive.infer`).
        integral: extra monomials that must be positive integers (divisibility).
        equal: ratios that must equal 1 (sizes a binary primitive identifies).
        flops: FLOPs per sample as a sum of monomials.
        params: parameter count as a sum of monomials.
        latency: predicted latency as a sum of monomials (in the latency
            model's integer unit; empty without a model, see :class:`SpaceContext`).
    """

    shape: Shape
    new_symbols: int = 0
    integral: tuple = ()
    equal: tuple = ()
    flops: tuple = ()
    params: tuple = ()
    latency: tuple = ()

    def renamed(self, mapping: Mapping[int, int]) -> Inference:
        """The same inference with free symbols renamed (``old id -> new id``)."""
        if not mapping:
            return self

        def ren(ms: tuple) -> tuple:
            return tuple(m.rename(mapping) for m in ms)

        return Inference(ren(self.shape), self.new_symbols, ren(self.integral), ren(self.equal), ren(self.flops), ren(self.params),
                         ren(self.latency))


@dataclass(frozen=True)
class SpaceContext:
    """Switches of the search space that change which primitives apply or what they cost.

    Attributes:
        allow_spatial_weights: let ``mix`` and ``scale`` learn weights over H or W.
        latency: a latency model (see :mod:`kasrl.latency`); with one, every
            inference made in this context carries its predicted latency as
            monomials of the sizes (:func:`kasrl.ir.graph.infer`).
    """

    allow_spatial_weights: bool = False
    latency: Any = field(default=None, compare=False)


DEFAULT_CONTEXT = SpaceContext()


def _unify(a: Monomial, b: Monomial) -> tuple | None:
    """Broadcast two slot sizes: ``(size, equality-or-None)``, or None if impossible."""
    if a == b:
        return a, None
    if a.is_one:
        return b, None
    if b.is_one:
        return a, None
    ratio = a / b
    if ratio.is_static:  # two different fixed sizes (3 vs 5, C vs 2C): never equal
        return None
    keep = min(a, b, key=lambda m: (len(m.free_symbols()), m.sort_key()))
    return keep, ratio


def _validate_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"attribute `{name}` must be one of {sorted(allowed, key=str)}, got {value!r}")


def _validate_int(name: str, value, lo: int, hi: int, odd: bool = False) -> None:
    if type(value) is not int or not lo <= value <= hi or (odd and value % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        raise ValueError(f"attribute `{name}` must be {kind} in [{lo}, {hi}], got {value!r}")


class Primitive:
    """Base class: a primitive together with its bound attributes (a template).

    Subclasses set ``name``, ``family``, ``arity`` and ``ATTRS`` (attribute name
    -> validator) and implement :meth:`infer`, :meth:`emit` and optionally
    :meth:`weights`. Instances are immutable, hashable and compare by
    ``(name, attrs)``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    arity: ClassVar[int] = 1
    commutative: ClassVar[bool] = False
    ATTRS: ClassVar[Mapping[str, Callable]] = {}

    def __init__(self, **attrs) -> None:
        unknown = set(attrs) - set(self.ATTRS)
        if unknown:
            raise ValueError(f"unknown attribute `{sorted(unknown)[0]}` for primitive `{self.name}`")
        missing = set(self.ATTRS) - set(attrs)
        if missing:
            raise ValueError(f"missing attribute `{sorted(missing)[0]}` for primitive `{self.name}`")
        for key, check in self.ATTRS.items():
            check(key, attrs[key])
        self.attrs = dict(sorted(attrs.items()))
        self.key = (self.name, tuple(self.attrs.items()))
        self._hash = hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Primitive) and self.key == other.key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return self.label()

    def label(self) -> str:
        """Short human-readable name, e.g. ``unfold[HW,k=3,d=1]``."""
        if not self.attrs:
            return self.name
        inner = ",".join(f"{k}={v}" if k not in ("fn", "op", "axes", "slot") else str(v) for k, v in self.attrs.items())
        return f"{self.name}[{inner}]"

    # -- to implement -------------------------------------------------
    def infer(self, shapes: Sequence[Shape], next_free: int, ctx: SpaceContext = DEFAULT_CONTEXT) -> Inference | None:
        """Output shape and costs for ``shapes``, or None if it does not apply."""
        raise NotImplementedError

    def weights(self, shapes: Sequence[Shape], out: Shape) -> list:
        """The learned tensors this application owns (none by default)."""
        return []

    def emit(self, ins: Sequence[str], shapes: Sequence[Shape], out: Shape, w: Mapping[str, str], sz: Callable) -> str:
        """A PyTorch expression computing the output.

        Args:
            ins: names of the input tensors (7-d).
            shapes: their shapes.
            out: the output shape.
            w: weight suffix -> expression of the weight tensor.
            sz: maps a :class:`Monomial` to a Python int expression.
        """
        raise NotImplementedError


def _dims(shape: Shape, sz: Callable) -> str:
    return ", ".join(sz(m) for m in shape)


# --------------------------------------------------------------------------
# contractions
# --------------------------------------------------------------------------
def _out_size(out: str, shape: Shape, next_free: int) -> tuple:
    """Resolve an ``out`` attribute to (size, number of new symbols)."""
    if out == "C":
        return C, 0
    return Monomial.symbol(free_symbol(next_free)), 1


class Projection(Primitive):
    """1x1 projection contracting ``(G, C, KH, KW)`` into a new channel size.

    ``out``: ``"C"`` or ``"new"`` (a free size). ``grouped``: when true the G
    slot is the group count (block-diagonal weights; needs G > 1), otherwise
    every channel-part element feeds every output.
    """

    name = "projection"
    family = "projection"
    ATTRS = {
        "out": lambda k, v: _validate_choice(k, v, {"C", "new"}),
        "grouped": lambda k, v: _validate_choice(k, v, {True, False}),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        grouped = self.attrs["grouped"]
        if grouped and s[G_SLOT].is_one:
            return None
        size, new = _out_size(self.attrs["out"], s, next_free)
        k = channel_volume(s)
        groups = s[G_SLOT] if grouped else ONE
        out = (ONE, size, ONE, ONE, s[H_SLOT], s[W_SLOT])
        integral = (size / groups,) if grouped else ()
        flops = (k * size * spatial_volume(s) * 2 / groups,)
        return Inference(out, new, integral, (), flops, (k * size / groups,))

    def weights(self, shapes, out):
        (s,) = shapes
        groups = s[G_SLOT] if self.attrs["grouped"] else ONE
        fan_in = channel_volume(s) / groups
        return [Weight("weight", (out[C_SLOT], fan_in, ONE, ONE), "fan_in", fan_in)]

    def emit(self, ins, shapes, out, w, sz):
        (s,) = shapes
        groups = sz(s[G_SLOT]) if self.attrs["grouped"] else "1"
        h, wd = sz(s[H_SLOT]), sz(s[W_SLOT])
        x = f"{ins[0]}.reshape(n, {sz(channel_volume(s))}, {h}, {wd})"
        call = f"F.conv2d({x}, {w['weight']}" + (f", groups={groups})" if groups != "1" else ")")
        return f"{call}.view(n, {_dims(out, sz)})"


class Conv(Primitive):
    """A kh x kw convolution over (H, W) with dilation and same padding.

    ``out``: ``"C"`` / ``"new"`` (regular convolution contracting the channel
    part; grouped by G when G > 1) or ``"depthwise"`` (one filter per
    channel-part element; the shape is kept). ``kh``/``kw``: odd window sizes,
    1 for a k x 1 or 1 x k window.
    """

    name = "conv"
    family = "conv"
    ATTRS = {
        "kh": lambda k, v: _validate_int(k, v, 1, 15, odd=True),
        "kw": lambda k, v: _validate_int(k, v, 1, 15, odd=True),
        "dilation": lambda k, v: _validate_int(k, v, 1, 8),
        "out": lambda k, v: _validate_choice(k, v, {"C", "new", "depthwise"}),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        kh, kw = self.attrs["kh"], self.attrs["kw"]
        if kh == 1 and kw == 1:
            return None
        if (kh > 1 and s[H_SLOT].is_one) or (kw > 1 and s[W_SLOT].is_one):
            return None
        k = channel_volume(s)
        window = kh * kw
        sp = spatial_volume(s)
        if self.attrs["out"] == "depthwise":
            return Inference(s, 0, (), (), (k * sp * (2 * window),), (k * window,))
        size, new = _out_size(self.attrs["out"], s, next_free)
        groups = s[G_SLOT]
        out = (ONE, size, ONE, ONE, s[H_SLOT], s[W_SLOT])
        integral = () if groups.is_one else (size / groups,)
        flops = (k * size * sp * (2 * window) / groups,)
        return Inference(out, new, integral, (), flops, (k * size * window / groups,))

    def weights(self, shapes, out):
        (s,) = shapes
        kh, kw = Monomial.const(self.attrs["kh"]), Monomial.const(self.attrs["kw"])
        k = channel_volume(s)
        if self.attrs["out"] == "depthwise":
            return [Weight("weight", (k, ONE, kh, kw), "fan_in", kh * kw)]
        fan_in = k / s[G_SLOT]
        return [Weight("weight", (out[C_SLOT], fan_in, kh, kw), "fan_in", fan_in * kh * kw)]

    def emit(self, ins, shapes, out, w, sz):
        (s,) = shapes
        kh, kw, d = self.attrs["kh"], self.attrs["kw"], self.attrs["dilation"]
        h, wd = sz(s[H_SLOT]), sz(s[W_SLOT])
        k = sz(channel_volume(s))
        groups = k if self.attrs["out"] == "depthwise" else sz(s[G_SLOT])
        pad = (d * (kh - 1) // 2, d * (kw - 1) // 2)
        x = f"{ins[0]}.reshape(n, {k}, {h}, {wd})"
        extra = f", padding={pad}" + (f", dilation={d}" if d > 1 else "") + (f", groups={groups}" if groups != "1" else "")
        return f"F.conv2d({x}, {w['weight']}{extra}).view(n, {_dims(out, sz)})"


def _slot_allowed(slot: int, ctx: SpaceContext) -> bool:
    return slot in CHANNEL_SLOTS or ctx.allow_spatial_weights


class Mix(Primitive):
    """Maps one slot to a new size with a learned matrix (other slots are batch).

    ``slot``: the slot name; ``out``: ``"same"`` (square), ``"C"`` (only for the
    C slot) or ``"new"`` (a free size). Spatial slots need
    ``allow_spatial_weights``.
    """

    name = "mix"
    family = "mix"
    ATTRS = {
        "slot": lambda k, v: _validate_choice(k, v, set(SLOTS)),
        "out": lambda k, v: _validate_choice(k, v, {"same", "C", "new"}),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        slot = SLOTS.index(self.attrs["slot"])
        out_kind = self.attrs["out"]
        if s[slot].is_one or not _slot_allowed(slot, ctx) or (out_kind == "C" and slot != C_SLOT):
            return None
        m = s[slot]
        if out_kind == "same":
            size, new = m, 0
        else:
            size, new = _out_size(out_kind, s, next_free)
        out = tuple(size if i == slot else d for i, d in enumerate(s))
        return Inference(out, new, (), (), (volume(s) * size * 2,), (m * size,))

    def weights(self, shapes, out):
        (s,) = shapes
        slot = SLOTS.index(self.attrs["slot"])
        return [Weight("weight", (s[slot], out[slot]), "fan_in", s[slot])]

    def emit(self, ins, shapes, out, w, sz):
        dim = 1 + SLOTS.index(self.attrs["slot"])
        # a matrix product on the last axis (einsum would skip the product when
        # an axis has size 1, and FlopCounterMode would then count 0)
        return f"({ins[0]}.movedim({dim}, -1) @ {w['weight']}).movedim(-1, {dim})"


class Scale(Primitive):
    """Multiplies by a learned weight along one slot (same shape)."""

    name = "scale"
    family = "scale"
    ATTRS = {"slot": lambda k, v: _validate_choice(k, v, set(SLOTS))}

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        slot = SLOTS.index(self.attrs["slot"])
        if s[slot].is_one or not _slot_allowed(slot, ctx):
            return None
        return Inference(s, 0, (), (), (), (s[slot],))

    def weights(self, shapes, out):
        slot = SLOTS.index(self.attrs["slot"])
        return [Weight("weight", (shapes[0][slot],), "ones")]

    def emit(self, ins, shapes, out, w, sz):
        slot = SLOTS.index(self.attrs["slot"])
        view = ", ".join("-1" if i == slot else "1" for i in range(6))
        return f"{ins[0]} * {w['weight']}.view(1, {view})"


# --------------------------------------------------------------------------
# data movement
# --------------------------------------------------------------------------
class Unfold(Primitive):
    """Adds a window axis: KH and/or KW of size k (dilation d, zero padding)."""

    name = "unfold"
    family = "unfold"
    ATTRS = {
        "axes": lambda k, v: _validate_choice(k, v, {"H", "W", "HW"}),
        "k": lambda k, v: _validate_int(k, v, 3, 15, odd=True),
        "dilation": lambda k, v: _validate_int(k, v, 1, 8),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        axes = self.attrs["axes"]
        km = Monomial.const(self.attrs["k"])
        out = list(s)
        if "H" in axes:
            if not s[KH_SLOT].is_one or s[H_SLOT].is_one:
                return None
            out[KH_SLOT] = km
        if "W" in axes:
            if not s[KW_SLOT].is_one or s[W_SLOT].is_one:
                return None
            out[KW_SLOT] = km
        return Inference(tuple(out))

    def emit(self, ins, shapes, out, w, sz):
        (s,) = shapes
        axes, k, d = self.attrs["axes"], self.attrs["k"], self.attrs["dilation"]
        p = d * (k - 1) // 2
        h, wd = sz(s[H_SLOT]), sz(s[W_SLOT])
        g, c, kh, kw = (sz(m) for m in s[:4])
        if axes == "HW":
            x = f"{ins[0]}.reshape(n, {sz(s[G_SLOT] * s[C_SLOT])}, {h}, {wd})"
            return f"F.unfold({x}, ({k}, {k}), dilation={d}, padding={p}).view(n, {g}, {c}, {k}, {k}, {h}, {wd})"
        if axes == "W":
            x = f"{ins[0]}.reshape(n, {sz(s[G_SLOT] * s[C_SLOT] * s[KH_SLOT])}, {h}, {wd})"
            return f"F.unfold({x}, (1, {k}), dilation=(1, {d}), padding=(0, {p})).view(n, {g}, {c}, {kh}, {k}, {h}, {wd})"
        x = f"{ins[0]}.reshape(n, {sz(s[G_SLOT] * s[C_SLOT] * s[KW_SLOT])}, {h}, {wd})"
        return (
            f"F.unfold({x}, ({k}, 1), dilation=({d}, 1), padding=({p}, 0))"
            f".view(n, {g}, {c}, {kw}, {k}, {h}, {wd}).transpose(3, 4)"
        )


class Group(Primitive):
    """Splits C into (G=g, C/g) with a free group count g of at least 2.

    (``g / 2`` must be a whole number: sizes are powers of two or such ratios of
    C, so that rules out exactly the group of size 1, an identity.)
    """

    name = "group"
    family = "group"
    ATTRS = {}

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        if not s[G_SLOT].is_one or s[C_SLOT].is_one:
            return None
        g = Monomial.symbol(free_symbol(next_free))
        out = (g, s[C_SLOT] / g) + tuple(s[2:])
        return Inference(out, 1, (g / 2,))

    def emit(self, ins, shapes, out, w, sz):
        return f"{ins[0]}.reshape(n, {_dims(out, sz)})"


class Shift(Primitive):
    """Shifts along H or W by ``offset`` positions, filling with zeros."""

    name = "shift"
    family = "shift"
    ATTRS = {
        "axes": lambda k, v: _validate_choice(k, v, {"H", "W"}),
        "offset": lambda k, v: _validate_int(k, v, -16, 16) if v != 0 else _validate_int(k, v, 1, 0),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        slot = H_SLOT if self.attrs["axes"] == "H" else W_SLOT
        if s[slot].is_one:
            return None
        return Inference(s)

    def emit(self, ins, shapes, out, w, sz):
        dim = 1 + (H_SLOT if self.attrs["axes"] == "H" else W_SLOT)
        return f"_shift({ins[0]}, {dim}, {self.attrs['offset']})"


# --------------------------------------------------------------------------
# reductions and element-wise
# --------------------------------------------------------------------------
class Fold(Primitive):
    """Removes one slot by its mean or max (the slot becomes 1)."""

    name = "fold"
    family = "fold"
    ATTRS = {
        "slot": lambda k, v: _validate_choice(k, v, set(SLOTS)),
        "mode": lambda k, v: _validate_choice(k, v, {"mean", "max"}),
    }

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        slot = SLOTS.index(self.attrs["slot"])
        if s[slot].is_one:
            return None
        return Inference(tuple(ONE if i == slot else d for i, d in enumerate(s)))

    def emit(self, ins, shapes, out, w, sz):
        dim = 1 + SLOTS.index(self.attrs["slot"])
        fn = "mean" if self.attrs["mode"] == "mean" else "amax"
        return f"{ins[0]}.{fn}({dim}, keepdim=True)"


class Softmax(Primitive):
    """Softmax over one slot."""

    name = "softmax"
    family = "softmax"
    ATTRS = {"slot": lambda k, v: _validate_choice(k, v, set(SLOTS))}

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        (s,) = shapes
        if s[SLOTS.index(self.attrs["slot"])].is_one:
            return None
        return Inference(s)

    def emit(self, ins, shapes, out, w, sz):
        return f"torch.softmax({ins[0]}, {1 + SLOTS.index(self.attrs['slot'])})"


_ACTIVATIONS = {
    "relu": "F.relu({})",
    "gelu": "F.gelu({})",
    "sigmoid": "torch.sigmoid({})",
    "tanh": "torch.tanh({})",
}
_ELEMENTWISE = {
    "abs": "{}.abs()",
    "exp": "{}.exp()",
    "neg": "-{}",
    "sin": "{}.sin()",
    # sqrt(|x|) with the gradient at 0 kept finite (clamped below at 1e-12)
    "sqrtabs": "{}.abs().clamp_min(1e-12).sqrt()",
    "square": "{}.square()",
}


class Activation(Primitive):
    """ReLU, GELU, sigmoid or tanh."""

    name = "activation"
    family = "activation"
    ATTRS = {"fn": lambda k, v: _validate_choice(k, v, set(_ACTIVATIONS))}

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        return Inference(shapes[0])

    def emit(self, ins, shapes, out, w, sz):
        return _ACTIVATIONS[self.attrs["fn"]].format(ins[0])


class Elementwise(Primitive):
    """abs, exp, neg, sin, sqrt(|x|) or square."""

    name = "elementwise"
    family = "elementwise"
    ATTRS = {"fn": lambda k, v: _validate_choice(k, v, set(_ELEMENTWISE))}

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        return Inference(shapes[0])

    def emit(self, ins, shapes, out, w, sz):
        return _ELEMENTWISE[self.attrs["fn"]].format(ins[0])


# --------------------------------------------------------------------------
# binary
# --------------------------------------------------------------------------
_BINARY = {
    "add": "{} + {}",
    "sub": "{} - {}",
    "mul": "{} * {}",
    "max": "torch.maximum({}, {})",
    "min": "torch.minimum({}, {})",
}


def _broadcast(a: Shape, b: Shape, skip: tuple = ()) -> tuple | None:
    """Slot-wise broadcast of two shapes: (shape, equalities) or None."""
    out = []
    equal = []
    for i in range(6):
        if i in skip:
            out.append(ONE)
            continue
        r = _unify(a[i], b[i])
        if r is None:
            return None
        out.append(r[0])
        if r[1] is not None:
            equal.append(r[1])
    return tuple(out), tuple(equal)


class Binary(Primitive):
    """Element-wise add, sub, mul, max or min of two branches, with broadcasting.

    Slots of size 1 broadcast. Two different sizes that involve free symbols
    are declared equal (an equality constraint for the size solver); two
    different fixed sizes make the primitive inapplicable.
    """

    name = "binary"
    family = "binary"
    arity = 2
    ATTRS = {"op": lambda k, v: _validate_choice(k, v, set(_BINARY))}

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commutative = self.attrs["op"] != "sub"

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        r = _broadcast(shapes[0], shapes[1])
        if r is None:
            return None
        return Inference(r[0], 0, (), r[1])

    def emit(self, ins, shapes, out, w, sz):
        return _BINARY[self.attrs["op"]].format(ins[0], ins[1])


_CONTRACTIONS = {"C": (C_SLOT,), "G": (G_SLOT,), "KH": (KH_SLOT,), "KW": (KW_SLOT,), "KHKW": (KH_SLOT, KW_SLOT), "H": (H_SLOT,),
                 "W": (W_SLOT,), "HW": (H_SLOT, W_SLOT)}


class BatchedMatmul(Primitive):
    """Contracts shared slots of two tensors: ``out = sum_S a * b / sqrt(|S|)``.

    ``contract``: the slots summed over (``C``, ``G``, ``KH``, ``KW``, ``KHKW``,
    ``H``, ``W`` or ``HW``), which must be present in both operands. Other
    slots present in both are batch axes; a slot present in one only is an
    outer-product axis. ``softmax``: normalise over the slots that only the
    second operand has (the "keys"), as in attention.
    """

    name = "bmm"
    family = "bmm"
    arity = 2
    ATTRS = {
        "contract": lambda k, v: _validate_choice(k, v, set(_CONTRACTIONS)),
        "softmax": lambda k, v: _validate_choice(k, v, {True, False}),
    }

    def _key_slots(self, a: Shape, b: Shape, skip: tuple) -> tuple:
        return tuple(i for i in range(6) if i not in skip and a[i].is_one and not b[i].is_one)

    def infer(self, shapes, next_free, ctx=DEFAULT_CONTEXT):
        a, b = shapes
        slots = _CONTRACTIONS[self.attrs["contract"]]
        contracted = ONE
        equal = []
        for i in slots:
            if a[i].is_one or b[i].is_one:
                return None
            r = _unify(a[i], b[i])
            if r is None:
                return None
            contracted = contracted * r[0]
            if r[1] is not None:
                equal.append(r[1])
        r = _broadcast(a, b, slots)
        if r is None:
            return None
        if self.attrs["softmax"] and not self._key_slots(a, b, slots):
            return None
        out = r[0]
        return Inference(out, 0, (), tuple(equal) + r[1], (volume(out) * contracted * 2,))

    def emit(self, ins, shapes, out, w, sz):
        a, b = shapes
        slots = _CONTRACTIONS[self.attrs["contract"]]
        batch = tuple(1 + i for i in range(6) if i not in slots and not a[i].is_one and not b[i].is_one)
        left = tuple(1 + i for i in range(6) if i not in slots and not a[i].is_one and b[i].is_one)
        right = tuple(1 + i for i in range(6) if i not in slots and a[i].is_one and not b[i].is_one)
        summed = tuple(1 + i for i in slots)
        contracted = ONE
        for i in slots:
            contracted = contracted * _unify(a[i], b[i])[0]
        y = f"_contract({ins[0]}, {ins[1]}, {batch}, {left}, {right}, {summed}) * ({sz(contracted)}) ** -0.5"
        if self.attrs["softmax"]:
            y = f"_softmax({y}, {right})"
        return y


PRIMITIVES: dict = {
    cls.name: cls
    for cls in (Projection, Conv, Mix, Scale, Unfold, Group, Shift, Fold, Softmax, Activation, Elementwise, Binary, BatchedMatmul)
}


def primitive_from_attrs(name: str, attrs: Mapping) -> Primitive:
    """Build a primitive by registry name, validating its attributes.

    Raises:
        KeyError: for an unknown primitive name.
        ValueError: for missing, unknown or invalid attributes.
    """
    if name not in PRIMITIVES:
        raise KeyError(name)
    return PRIMITIVES[name](**attrs)
