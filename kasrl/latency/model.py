"""A calibrated latency model: a kernel's time as the sum of its ops' times.

FLOPs do not predict a kernel's latency on a CPU: unfolds, reshapes and
element-wise chains move memory, and every op in eager PyTorch pays a fixed
dispatch cost. In eager mode a kernel runs its ops one after the other (one
line of the generated ``forward`` per node, see :mod:`kasrl.codegen.source`),
so its time is close to the sum of its ops' times. The model is therefore
additive, one small linear predictor per *op kind* (a cost class of
primitives, :func:`op_kind`)::

    latency(kernel) = sum over live nodes v of  s[k] * (a[k] + b[k] * FLOPs(v) + c[k] * bytes(v))
                      + a[kernel] + c[kernel] * bytes(kernel input and output)

where ``k`` is the node's kind, ``FLOPs(v)`` is the batch times the node's FLOPs
per sample (as :attr:`kasrl.ir.primitives.Inference.flops`: multiply-adds count
2, only contractions count) and ``bytes(v)`` is the element size times
``batch * (input volumes + output volume) + parameters``. ``(a, b, c)[k]`` is
what an op of kind ``k`` costs alone; ``s[k]`` how much slower such ops run
inside a kernel (their inputs arrive strided from the op before, and the other
ops evict the caches: measured here, the ops of a kernel take 20-30% longer in
it than each alone). The pseudo-kind ``kernel`` carries what the kernel module
adds around its nodes (the module call and the input and output reshapes). The
replaced 3x3 convolution, an op on its own, costs its kind's ``(a, b, c)``
(:meth:`LatencyModel.predict_conv3x3`). The coefficients are fitted per device by
:mod:`kasrl.latency.calibrate` and stored in a profile (:mod:`kasrl.latency.profile`).

**Exact integer form for the size solver.** :meth:`LatencyModel.node_terms`
gives a node's predicted latency as monomials of the sizes
(:class:`kasrl.ir.dims.Monomial`) in an integer time unit (``10**unit_exp``
seconds, chosen when the model is made): every coefficient is rounded to a whole
number of units (in-kernel scale included), so wherever the FLOPs and volumes
are integers (at every legal size assignment) each term is a whole number of
units, and :meth:`LatencyModel.predict_units` is exactly the sum of the terms'
values plus :meth:`LatencyModel.kernel_terms`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType

from kasrl.ir.dims import ONE, C, H, Monomial, W, free_symbol
from kasrl.ir.graph import KernelGraph, Node
from kasrl.ir.primitives import Conv, Inference, Primitive
from kasrl.ir.shape import Shape, volume
from kasrl.ir.sizes import symbol_values
from kasrl.solver.budget import Placement, conv3x3_flops, conv3x3_params

__all__ = [
    "KINDS",
    "KERNEL",
    "CONV_TAPS",
    "FEATURES",
    "ELEMENT_SIZES",
    "op_kind",
    "node_inference",
    "node_features",
    "kernel_features",
    "conv3x3_features",
    "conv3x3_kind",
    "LatencyModel",
    "choose_unit",
]

#: The pseudo-kind of the kernel module's own overhead (its call and the input/output reshapes).
KERNEL = "kernel"
#: The features of one node, in the order of each kind's coefficients.
FEATURES = ("call", "flop", "byte")

#: Bytes per element of the dtypes a model can be calibrated for.
ELEMENT_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

#: Every op kind, then the ``kernel`` pseudo-kind; a model has coefficients for each.
#: Window sizes (taps, ``kh * kw``) a convolution's kind is rounded up to.
CONV_TAPS = (3, 5, 7, 9, 25, 49, 225)

KINDS = (
    "projection",
    "projection.grouped",
    *(f"{base}.k{taps}{dil}" for base in ("conv", "conv.new", "conv.depthwise") for taps in CONV_TAPS for dil in ("", ".dilated")),
    "mix",
    "mix.window",
    "mix.spatial",
    "scale",
    "unfold",
    "group",
    "shift.H",
    "shift.W",
    "fold.mean",
    "fold.max",
    "softmax",
    "softmax.spatial",
    "elementwise.simple",
    "activation.gelu",
    "activation.sigmoid",
    "activation.tanh",
    "elementwise.exp",
    "elementwise.sin",
    "elementwise.sqrtabs",
    "binary",
    "bmm",
    "bmm.softmax",
    KERNEL,
)

#: One pass over memory with no transcendental function: these run at the same speed.
_SIMPLE = {("activation", "relu"), ("elementwise", "abs"), ("elementwise", "neg"), ("elementwise", "square")}
_WINDOW_SLOTS = ("KH", "KW")
_SPATIAL_SLOTS = ("H", "W")


def op_kind(prim: Primitive) -> str:
    """The cost class of a primitive (one of :data:`KINDS`, never ``kernel``); it depends on the attributes only.

    Variants measured to run at different speeds are separate kinds:

    * a convolution to C channels (``conv``), to a free number (``conv.new``: its
      FLOPs and bytes are the same for ``a -> b`` and ``b -> a`` channels, which
      oneDNN does not run alike) or depthwise, by window size (``conv.k9``: a
      window of up to 9 taps, such as the 3x3 one; the taps are rounded up to one
      of :data:`CONV_TAPS`; oneDNN's speed per FLOP depends on the window) and
      dilated or not (a convolution dilated along W ran 2-12x slower per FLOP);
    * a matrix over channels, over a 3..7-wide window or over a spatial axis;
    * a shift or a softmax along the contiguous axis W or a strided one;
    * a mean or a max; each transcendental function.

    Variants measured at the same speed share one: ``relu``, ``abs``, ``neg`` and
    ``square`` are ``elementwise.simple``; an unfold's axes and window, a binary
    op's operation, do not change the cost per byte.
    """
    name, attrs = prim.name, prim.attrs
    if name == "projection":
        return "projection.grouped" if attrs["grouped"] else "projection"
    if name == "conv":
        taps = next(t for t in CONV_TAPS if attrs["kh"] * attrs["kw"] <= t)
        base = {"C": "conv", "new": "conv.new", "depthwise": "conv.depthwise"}[attrs["out"]]
        return f"{base}.k{taps}" + (".dilated" if attrs["dilation"] > 1 else "")
    if name == "mix":
        slot = attrs["slot"]
        return "mix.window" if slot in _WINDOW_SLOTS else "mix.spatial" if slot in _SPATIAL_SLOTS else "mix"
    if name == "shift":
        return f"shift.{attrs['axes']}"
    if name == "fold":
        return f"fold.{attrs['mode']}"
    if name == "softmax":
        return "softmax.spatial" if attrs["slot"] in _SPATIAL_SLOTS else "softmax"
    if name in ("activation", "elementwise"):
        return "elementwise.simple" if (name, attrs["fn"]) in _SIMPLE else f"{name}.{attrs['fn']}"
    if name == "bmm":
        return "bmm.softmax" if attrs["softmax"] else "bmm"
    if name in ("scale", "unfold", "group", "binary"):
        return name
    raise ValueError(f"primitive `{prim.label()}` has no latency kind")


def conv3x3_kind() -> str:
    """The kind of the replaced 3x3 convolution C -> C (dense, 9 taps, undilated: ``conv.k9``)."""
    return op_kind(Conv(kh=3, kw=3, dilation=1, out="C"))


def node_inference(graph: KernelGraph, node: Node) -> Inference:
    """The :class:`~kasrl.ir.primitives.Inference` a graph node was made with (its free sizes named as in the graph)."""
    shapes = tuple(graph.nodes[i].shape for i in node.inputs)
    next_free = node.symbols[0] - free_symbol(0) if node.symbols else graph.n_free
    inf = node.prim.infer(shapes, next_free, graph.ctx)
    if inf is None or inf.shape != node.shape:  # pragma: no cover - a graph is well formed by construction
        raise ValueError(f"node %{node.id} ({node.prim.label()}) does not re-infer to its shape")
    return inf


def _symbolic_features(in_shapes: Sequence[Shape], inf: Inference, batch: int, element_size: int) -> tuple:
    """``(FLOPs, bytes)`` as tuples of monomials (batch and element size folded in)."""
    flops = tuple(m * batch for m in inf.flops)
    moved = tuple(volume(s) * (batch * element_size) for s in (*in_shapes, inf.shape))
    moved += tuple(m * element_size for m in inf.params)
    return flops, moved


def _value(terms: Sequence[Monomial], values: Mapping[int, Fraction]) -> int:
    total = sum((m.evaluate(values) for m in terms), Fraction(0))
    if total.denominator != 1:
        raise ValueError(f"a cost is not an integer at these sizes ({total})")
    return int(total)


def node_features(graph: KernelGraph, node: Node, placement: Placement, batch: int, element_size: int = 4) -> tuple:
    """``(1, FLOPs, bytes)`` of a node of a solved kernel at ``placement`` (integers)."""
    values = symbol_values(graph.sizes or {}, *placement)
    in_shapes = [graph.nodes[i].shape for i in node.inputs]
    flops, moved = _symbolic_features(in_shapes, node_inference(graph, node), batch, element_size)
    return (1, _value(flops, values), _value(moved, values))


def kernel_features(placement: Placement, batch: int, element_size: int = 4) -> tuple:
    """``(1, 0, bytes)`` of the ``kernel`` pseudo-kind: its input and output tensors."""
    return (1, 0, 2 * batch * element_size * placement.c * placement.h * placement.w)


def conv3x3_features(placement: Placement, batch: int, element_size: int = 4) -> tuple:
    """``(1, FLOPs, bytes)`` of the replaced 3x3 convolution C -> C (kind ``conv``)."""
    vol = placement.c * placement.h * placement.w
    return (1, batch * conv3x3_flops(placement), element_size * (2 * batch * vol + conv3x3_params(placement)))


def choose_unit(coefficients: Mapping[str, Sequence[float]], largest: float, scales: Mapping[str, float] | None = None,
                min_units: int = 1000, max_units: float = 1e15) -> int:
    """The exponent ``e`` of the time unit ``10**e`` seconds.

    The largest unit at which every nonzero coefficient, alone and times its
    kind's in-kernel scale, is at least ``min_units`` units (rounding it then
    costs under ``0.5 / min_units``), coarsened while ``largest`` (seconds; the 3x3
    convolution at the largest placement) would reach ``max_units`` units.
    """
    scales = scales or {}
    nonzero = [float(c) * f for k, cs in coefficients.items() for c in cs for f in (1.0, scales.get(k, 1.0)) if c * f > 0]
    e = math.floor(math.log10(min(nonzero) / min_units)) if nonzero else -9
    while largest > 0 and largest / 10.0**e >= max_units:
        e += 1
    return e


def _units(seconds: float, unit_exp: int) -> int:
    return round(Fraction(seconds) / Fraction(10) ** unit_exp)


@dataclass(frozen=True)
class LatencyModel:
    """Per-kind latency coefficients of one device, for one batch size and dtype.

    A node of kind ``k`` costs ``scales[k] * (a + b * FLOPs + c * bytes)`` inside a
    kernel, with ``(a, b, c) = coefficients[k]`` its cost alone (the replaced 3x3
    convolution, an op on its own, costs exactly the ``conv`` coefficients).

    Attributes:
        coefficients: kind -> ``(seconds per call, seconds per FLOP, seconds per byte)``
            of an op alone, for every kind in :data:`KINDS` (``kernel`` included).
        batch: images per forward pass the model predicts for.
        dtype: the element type (``float32`` ...); its size is :attr:`element_size`.
        fingerprint: the device the model was fitted on (see :mod:`kasrl.latency.profile`).
        unit_exp: the integer time unit is ``10**unit_exp`` seconds.
        scales: node kind -> how much slower the kind runs inside a kernel than
            alone (missing kinds: 1); not for ``kernel``.
    """

    coefficients: Mapping[str, tuple]
    batch: int
    dtype: str = "float32"
    fingerprint: Mapping[str, object] = field(default_factory=dict)
    unit_exp: int = -12
    scales: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coefs = {}
        for kind in KINDS:
            if kind not in self.coefficients:
                raise ValueError(f"the latency model has no coefficients for kind `{kind}`")
            values = tuple(float(v) for v in self.coefficients[kind])
            if len(values) != len(FEATURES) or not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"kind `{kind}`: coefficients must be {len(FEATURES)} finite non-negative numbers, got {values}")
            coefs[kind] = values
        extra = set(self.coefficients) - set(KINDS)
        if extra:
            raise ValueError(f"unknown latency kind `{sorted(extra)[0]}`")
        if self.dtype not in ELEMENT_SIZES:
            raise ValueError(f"dtype must be one of {sorted(ELEMENT_SIZES)}, got {self.dtype!r}")
        if type(self.batch) is not int or self.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {self.batch!r}")
        if type(self.unit_exp) is not int:
            raise ValueError(f"unit_exp must be an integer, got {self.unit_exp!r}")
        scales = {}
        for kind in KINDS[:-1]:
            v = float(self.scales.get(kind, 1.0))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"kind `{kind}`: the in-kernel scale must be a finite non-negative number, got {v}")
            scales[kind] = v
        extra = set(self.scales) - set(KINDS[:-1])
        if extra:
            raise ValueError(f"no in-kernel scale for kind `{sorted(extra)[0]}`")
        object.__setattr__(self, "coefficients", MappingProxyType(coefs))
        object.__setattr__(self, "scales", MappingProxyType(scales))
        object.__setattr__(self, "fingerprint", MappingProxyType(dict(self.fingerprint)))
        units = {k: tuple(_units(v * scales.get(k, 1.0), self.unit_exp) for v in vs) for k, vs in coefs.items()}
        object.__setattr__(self, "_int", MappingProxyType(units))
        object.__setattr__(self, "_conv_alone", tuple(_units(v, self.unit_exp) for v in coefs[conv3x3_kind()]))

    def __hash__(self) -> int:
        return hash((self.batch, self.dtype, self.unit_exp, tuple(self.coefficients.items()), tuple(self.scales.items())))

    # -- units ----------------------------------------------------------------
    @property
    def element_size(self) -> int:
        """Bytes per element of :attr:`dtype`."""
        return ELEMENT_SIZES[self.dtype]

    @property
    def unit_s(self) -> float:
        """The integer time unit, in seconds."""
        return 10.0**self.unit_exp

    def integer_coefficients(self, kind: str) -> tuple:
        """``(units per call, units per FLOP, units per byte)`` of ``kind`` inside a kernel (rounded, scale included)."""
        return self._int[kind]  # type: ignore[attr-defined]

    def to_seconds(self, units: int | Fraction) -> float:
        """A latency in units, in seconds."""
        return float(Fraction(units) * Fraction(10) ** self.unit_exp)

    # -- symbolic terms (for the size solver) -----------------------------------
    def _terms(self, kind: str, flops: Sequence[Monomial], moved: Sequence[Monomial]) -> tuple:
        per_call, per_flop, per_byte = self.integer_coefficients(kind)
        poly: dict = {}
        for coef, terms in ((per_call, (ONE,)), (per_flop, flops), (per_byte, moved)):
            if not coef:
                continue
            for m in terms:
                poly[m.powers] = poly.get(m.powers, Fraction(0)) + coef * Fraction(m.num, m.den)
        return tuple(sorted(Monomial(c.numerator, c.denominator, p) for p, c in poly.items() if c))

    def node_terms(self, prim: Primitive, in_shapes: Sequence[Shape], inf: Inference) -> tuple:
        """A node's predicted latency in units, as monomials of the sizes (summed).

        ``inf`` is what ``prim.infer(in_shapes, ...)`` returned. Each monomial is an
        integer coefficient times a FLOP count, a tensor volume (times batch and
        element size) or a parameter count of the node, so at legal sizes its value
        is a whole number of units.
        """
        flops, moved = _symbolic_features(in_shapes, inf, self.batch, self.element_size)
        return self._terms(op_kind(prim), flops, moved)

    def kernel_terms(self) -> tuple:
        """The ``kernel`` pseudo-kind's latency in units, as monomials of C, H and W."""
        return self._terms(KERNEL, (), (C * H * W * (2 * self.batch * self.element_size),))

    # -- numeric predictions --------------------------------------------------
    def _units_of(self, kind: str, features: Sequence[int]) -> int:
        return sum(c * f for c, f in zip(self.integer_coefficients(kind), features, strict=True))

    def predict_units(self, graph: KernelGraph, placement: Placement) -> int:
        """Predicted latency of a finished, solved kernel at ``placement``, in units.

        Raises:
            ValueError: when the graph is unfinished or unsolved, or a size is not an integer here.
        """
        if not graph.is_finished or (graph.free_symbols and graph.sizes is None):
            raise ValueError("the latency of a kernel is predicted once it is finished and its sizes are solved")
        placement = Placement(*placement)
        total = self._units_of(KERNEL, kernel_features(placement, self.batch, self.element_size))
        for node in graph.live_nodes()[1:]:
            total += self._units_of(op_kind(node.prim), node_features(graph, node, placement, self.batch, self.element_size))
        return total

    def predict(self, graph: KernelGraph, placement: Placement) -> float:
        """Predicted latency (seconds) of a finished, solved kernel at ``placement``."""
        return self.to_seconds(self.predict_units(graph, placement))

    def node_seconds(self, graph: KernelGraph, placement: Placement) -> list:
        """``[(node, kind, predicted seconds)]`` for the kernel's live nodes (a breakdown of :meth:`predict`)."""
        placement = Placement(*placement)
        out = []
        for node in graph.live_nodes()[1:]:
            kind = op_kind(node.prim)
            units = self._units_of(kind, node_features(graph, node, placement, self.batch, self.element_size))
            out.append((node, kind, self.to_seconds(units)))
        return out

    def conv3x3_units(self, placement: Placement) -> int:
        """Predicted latency of the replaced 3x3 convolution at ``placement``, in units (kind ``conv``)."""
        features = conv3x3_features(Placement(*placement), self.batch, self.element_size)
        return sum(c * f for c, f in zip(self._conv_alone, features, strict=True))  # type: ignore[attr-defined]

    def predict_conv3x3(self, placement: Placement) -> float:
        """Predicted latency (seconds) of the replaced 3x3 convolution C -> C at ``placement``."""
        return self.to_seconds(self.conv3x3_units(placement))
