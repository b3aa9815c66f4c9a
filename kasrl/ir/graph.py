"""Kernel graphs: a DAG of primitive applications plus the solved sizes.

A :class:`KernelGraph` starts as the input tensor ``[1, C, 1, 1, H, W]`` with
one open *branch*. Unary primitives replace a branch by their output, binary
primitives merge two branches into one, and :meth:`KernelGraph.fork` duplicates
a branch (so one tensor can feed several primitives). A kernel is *finished*
when one branch is left and it has the input's shape.

Every partial graph is well formed by construction: :meth:`apply` refuses a
primitive that does not apply, and the constraints the graph must satisfy to
be sizable (integral sizes, equal sizes, tensor volumes, FLOPs and parameters)
are collected as it grows, for the size solver in :mod:`kasrl.solver`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from kasrl.errors import IllegalAction
from kasrl.ir.dims import Monomial, free_symbol
from kasrl.ir.primitives import DEFAULT_CONTEXT, Inference, Primitive, SpaceContext
from kasrl.ir.shape import INPUT_SHAPE, Shape, format_shape, volume

__all__ = ["Node", "Constraints", "KernelGraph", "infer"]


@dataclass(frozen=True)
class Node:
    """One primitive application.

    Attributes:
        id: position in :attr:`KernelGraph.nodes` (0 is the input).
        prim: the primitive with its attributes (None for the input).
        inputs: ids of the operand nodes, in operand order.
        shape: the output shape.
        symbols: ids of the free sizes this node introduced.
        closing: True for nodes added by the finishing step.
    """

    id: int
    prim: Primitive | None
    inputs: tuple
    shape: Shape
    symbols: tuple = ()
    closing: bool = False

    @property
    def op(self) -> str:
        """The primitive's registry name (``"input"`` for the input)."""
        return "input" if self.prim is None else self.prim.name


def infer(prim: Primitive, shapes: Sequence[Shape], next_free: int, ctx: SpaceContext = DEFAULT_CONTEXT) -> Inference | None:
    """``prim.infer`` plus, when ``ctx`` has a latency model, the node's predicted latency terms."""
    inf = prim.infer(shapes, next_free, ctx)
    if inf is not None and ctx.latency is not None:
        inf.latency = tuple(ctx.latency.node_terms(prim, tuple(shapes), inf))
    return inf


def _add_poly(poly: dict, terms: Iterable[Monomial]) -> None:
    for m in terms:
        key = m.powers
        poly[key] = poly.get(key, Fraction(0)) + Fraction(m.num, m.den)


def poly_terms(poly: dict) -> tuple:
    """The monomials of a ``{powers: coefficient}`` polynomial, in canonical order."""
    return tuple(sorted(Monomial(c.numerator, c.denominator, p) for p, c in poly.items()))


@dataclass
class Constraints:
    """What the free sizes of a kernel must satisfy at every placement.

    Attributes:
        integral: monomials that must be positive integers.
        equal: monomials that must equal 1 (identified sizes).
        volume: tensor volumes (elements per sample), capped by the budget.
        flops: FLOPs per sample, ``{powers: coefficient}``.
        params: parameters, ``{powers: coefficient}``.
        latency: predicted latency, ``{powers: coefficient}`` (empty without a latency model).
    """

    integral: set = field(default_factory=set)
    equal: set = field(default_factory=set)
    volume: set = field(default_factory=set)
    flops: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)

    def copy(self) -> Constraints:
        """A copy that can grow independently."""
        return Constraints(set(self.integral), set(self.equal), set(self.volume), dict(self.flops), dict(self.params), dict(self.latency))

    def add(self, inf: Inference) -> None:
        """Add the constraints and costs of one primitive application."""
        for m in inf.shape:
            if m.free_symbols():
                self.integral.add(m)
        self.integral.update(m for m in inf.integral if m.free_symbols())
        self.equal.update(inf.equal)
        self.volume.add(volume(inf.shape))
        _add_poly(self.flops, inf.flops)
        _add_poly(self.params, inf.params)
        _add_poly(self.latency, inf.latency)

    def key(self) -> tuple:
        """A hashable canonical form (for caches)."""
        return (
            tuple(sorted(self.integral)),
            tuple(sorted(self.equal)),
            tuple(sorted(self.volume)),
            poly_terms(self.flops),
            poly_terms(self.params),
            poly_terms(self.latency),
        )


class KernelGraph:
    """A kernel, under construction or finished.

    Build with :meth:`apply` and :meth:`fork`; read :attr:`nodes`,
    :attr:`branches` (open node ids, in operand order) and
    :attr:`constraints`. :attr:`sizes` holds the solved free sizes once the
    size solver has run (symbol id -> ``(mode, exponent)``, see
    :mod:`kasrl.solver`).
    """

    def __init__(self, ctx: SpaceContext = DEFAULT_CONTEXT) -> None:
        self.ctx = ctx
        self.nodes: list = [Node(0, None, (), INPUT_SHAPE)]
        self.branches: list = [0]
        self.n_free = 0
        self.constraints = Constraints()
        self.constraints.volume.add(volume(INPUT_SHAPE))
        if ctx.latency is not None:  # the kernel module's own per-call cost
            _add_poly(self.constraints.latency, ctx.latency.kernel_terms())
        self.sizes: dict | None = None
        self.steps = 0  # primitive applications and forks chosen (closing excluded)
        self.peak_width = 1  # the most branches open at once

    # -- copying --------------------------------------------------------
    def __getstate__(self) -> dict:
        """Pickle the graph itself, not what a search space or the oracle cached on it
        (underscored attributes): those hold process-local ids (effect ids,
        successor tables) and are rebuilt on demand in the receiving process."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def copy(self) -> KernelGraph:
        """An independent copy (nodes are immutable and shared)."""
        g = KernelGraph.__new__(KernelGraph)
        g.ctx = self.ctx
        g.nodes = list(self.nodes)
        g.branches = list(self.branches)
        g.n_free = self.n_free
        g.constraints = self.constraints.copy()
        g.sizes = dict(self.sizes) if self.sizes is not None else None
        g.steps = self.steps
        g.peak_width = self.peak_width
        return g

    # -- queries ---------------------------------------------------------
    @property
    def width(self) -> int:
        """Number of open branches."""
        return len(self.branches)

    def branch_shape(self, i: int) -> Shape:
        """Shape of open branch ``i``."""
        return self.nodes[self.branches[i]].shape

    @property
    def is_finished(self) -> bool:
        """One open branch with the input's shape ``[1, C, 1, 1, H, W]``."""
        return len(self.branches) == 1 and self.nodes[self.branches[0]].shape == INPUT_SHAPE and len(self.nodes) > 1

    @property
    def output(self) -> Node:
        """The node of the first open branch (the output once finished)."""
        return self.nodes[self.branches[0]]

    @property
    def free_symbols(self) -> tuple:
        """Ids of every free size introduced so far."""
        return tuple(free_symbol(i) for i in range(self.n_free))

    @property
    def n_primitives(self) -> int:
        """Number of primitive applications (the input excluded)."""
        return len(self.nodes) - 1

    def infer(self, prim: Primitive, operands: Sequence[int]) -> Inference | None:
        """What applying ``prim`` to the branches ``operands`` would give."""
        if len(operands) != prim.arity:
            return None
        if len(set(operands)) != len(operands) or any(not 0 <= i < len(self.branches) for i in operands):
            return None
        shapes = tuple(self.nodes[self.branches[i]].shape for i in operands)
        return infer(prim, shapes, self.n_free, self.ctx)

    # -- building -------------------------------------------------------
    def apply(self, prim: Primitive, operands: Sequence[int], closing: bool = False, inference: Inference | None = None) -> Node:
        """Apply ``prim`` to the open branches ``operands`` (indices into :attr:`branches`).

        A unary primitive replaces its branch; a binary one replaces its first
        operand's branch and closes the second.

        Raises:
            IllegalAction: when the primitive does not apply to those branches.
        """
        inf = inference if inference is not None else self.infer(prim, operands)
        if inf is None:
            shapes = ", ".join(format_shape(self.branch_shape(i)) for i in operands if 0 <= i < len(self.branches))
            raise IllegalAction(f"primitive `{prim.label()}` does not apply to branches {tuple(operands)} with shapes {shapes}")
        symbols = tuple(free_symbol(self.n_free + i) for i in range(inf.new_symbols))
        node = Node(len(self.nodes), prim, tuple(self.branches[i] for i in operands), inf.shape, symbols, closing)
        self.nodes.append(node)
        self.n_free += inf.new_symbols
        self.constraints.add(inf)
        self.branches[operands[0]] = node.id
        if len(operands) == 2:
            del self.branches[operands[1]]
        if not closing:
            self.steps += 1
        self.sizes = None
        return node

    def add_node(self, prim: Primitive, inputs: Sequence[int], closing: bool = False) -> Node:
        """Append a node reading earlier *nodes* (not branches); used to load documents.

        The open branches become the nodes nobody reads yet (inputs first in
        operand order), so a loaded finished kernel has its output as the one
        open branch.

        Raises:
            IllegalAction: when an input id is unknown or the primitive does not apply.
        """
        if len(inputs) != prim.arity or any(not 0 <= i < len(self.nodes) for i in inputs):
            raise IllegalAction(f"primitive `{prim.label()}` needs {prim.arity} input(s) among nodes 0..{len(self.nodes) - 1}, "
                                f"got {list(inputs)}")
        shapes = tuple(self.nodes[i].shape for i in inputs)
        inf = infer(prim, shapes, self.n_free, self.ctx)
        if inf is None:
            got = ", ".join(format_shape(s) for s in shapes)
            raise IllegalAction(f"primitive `{prim.label()}` does not apply to inputs {list(inputs)} with shapes {got}")
        symbols = tuple(free_symbol(self.n_free + i) for i in range(inf.new_symbols))
        node = Node(len(self.nodes), prim, tuple(inputs), inf.shape, symbols, closing)
        self.nodes.append(node)
        self.n_free += inf.new_symbols
        self.constraints.add(inf)
        if not closing:
            self.steps += 1
        used = {i for n in self.nodes for i in n.inputs}
        self.branches = [n.id for n in self.nodes if n.id not in used]
        self.sizes = None
        return node

    def fork(self, i: int, closing: bool = False) -> None:
        """Duplicate open branch ``i`` (the copy is appended to :attr:`branches`).

        Raises:
            IllegalAction: when ``i`` is not an open branch.
        """
        if not 0 <= i < len(self.branches):
            raise IllegalAction(f"cannot fork branch {i}: there are {len(self.branches)} open branches")
        self.branches.append(self.branches[i])
        if not closing:
            self.steps += 1
        self.peak_width = max(self.peak_width, len(self.branches))

    # -- derived views --------------------------------------------------
    def users(self) -> dict:
        """Node id -> ids of the nodes that read it."""
        out: dict = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def live_nodes(self) -> list:
        """Nodes that the open branches depend on, in id order."""
        live = set()
        stack = list(self.branches)
        while stack:
            i = stack.pop()
            if i in live:
                continue
            live.add(i)
            stack.extend(self.nodes[i].inputs)
        return [n for n in self.nodes if n.id in live]

    def families(self) -> dict:
        """Primitive family -> number of applications."""
        out: dict = {}
        for n in self.nodes[1:]:
            out[n.prim.family] = out.get(n.prim.family, 0) + 1
        return out

    def depth(self) -> int:
        """Length of the longest input-to-output path (in primitives)."""
        d = [0] * len(self.nodes)
        for n in self.nodes[1:]:
            d[n.id] = 1 + max(d[i] for i in n.inputs)
        return max(d[b] for b in self.branches)

    def describe(self) -> str:
        """A multi-line text listing of the nodes (used by ``render``)."""
        lines = []
        for n in self.nodes:
            if n.prim is None:
                lines.append(f"%0 = input  {format_shape(n.shape)}")
                continue
            args = ", ".join(f"%{i}" for i in n.inputs)
            mark = "  (closing)" if n.closing else ""
            lines.append(f"%{n.id} = {n.prim.label()}({args})  {format_shape(n.shape)}{mark}")
        lines.append("open: " + ", ".join(f"%{b}" for b in self.branches))
        return "\n".join(lines)
