"""Standalone PyTorch source for a kernel.

:func:`kernel_source` writes one self-contained file that imports only torch
and defines ``class Kernel(nn.Module)`` with ``__init__(self, c, h, w)`` and
``forward(x)`` mapping ``[N, C, H, W]`` to ``[N, C, H, W]``. Each primitive's
:meth:`~kasrl.ir.primitives.Primitive.emit` gives one line of ``forward``;
:mod:`kasrl.codegen.module` compiles the very same source for the in-process
module, so the two always compute the same function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kasrl.ir.dims import C_ID, H_ID, W_ID, Monomial, symbol_name
from kasrl.ir.graph import KernelGraph
from kasrl.ir.shape import format_shape
from kasrl.ir.sizes import SizeChoice

__all__ = ["kernel_source", "weight_name"]

_HELPERS = {
    "_shift": '''
def _shift(x: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """Shift ``x`` by ``offset`` positions along ``dim``, filling with zeros."""
    size = x.shape[dim]
    pad = [0, 0] * (x.dim() - dim)
    k = abs(offset)
    pad[-2 if offset > 0 else -1] = k
    y = F.pad(x, pad)
    return y.narrow(dim, 0 if offset > 0 else k, size)
''',
    "_contract": '''
def _contract(a: torch.Tensor, b: torch.Tensor, batch: tuple, left: tuple, right: tuple, summed: tuple) -> torch.Tensor:
    """Sum over the ``summed`` axes of ``a * b`` as one batched matrix product.

    Both are 7-d ``[N, G, C, KH, KW, H, W]``; ``batch`` axes are in both, ``left``
    only in ``a`` and ``right`` only in ``b`` (size 1 in the other).
    """
    n = a.shape[0]
    rest_a = [d for d in range(1, 7) if d not in batch + left + summed]
    rest_b = [d for d in range(1, 7) if d not in batch + summed + right]

    def size(t: torch.Tensor, dims: tuple) -> int:
        out = 1
        for d in dims:
            out *= t.shape[d]
        return out

    am = a.permute(0, *batch, *left, *summed, *rest_a).reshape(n, size(a, batch), size(a, left), size(a, summed))
    bm = b.permute(0, *batch, *summed, *right, *rest_b).reshape(n, size(b, batch), size(b, summed), size(b, right))
    dims = batch + left + right
    sizes = [a.shape[d] for d in batch + left] + [b.shape[d] for d in right]
    y = (am @ bm).reshape(n, *sizes)
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    full = [n, 1, 1, 1, 1, 1, 1]
    for d, s in zip(dims, sizes):
        full[d] = s
    return y.permute(0, *[1 + i for i in order]).reshape(full)
''',
    "_softmax": '''
def _softmax(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    """Softmax over several dimensions at once."""
    x = x - x.amax(dims, keepdim=True)
    e = x.exp()
    return e / e.sum(dims, keepdim=True)
''',
}


def weight_name(node_id: int) -> str:
    """Attribute name of a node's weight."""
    return f"weight{node_id}"


def _names() -> dict:
    return {C_ID: "c", H_ID: "h", W_ID: "w"}


def _sz_factory(graph: KernelGraph) -> callable:
    names = _names()
    for s in graph.free_symbols:
        names[s] = symbol_name(s)

    def sz(m: Monomial) -> str:
        return m.python_expr(names)

    return sz


def _divisibility_checks(graph: KernelGraph, sz) -> list:
    """`__init__` lines that reject a (c, h, w) at which a size is not an integer."""
    lines = []
    names = _names()
    for s in graph.free_symbols:
        names[s] = symbol_name(s)
    for m in sorted(graph.constraints.integral):
        ups = Monomial(m.num, 1, tuple((s, p) for s, p in m.powers if p > 0))
        downs = Monomial(m.den, 1, tuple((s, -p) for s, p in m.powers if p < 0))
        if downs.is_one:
            continue
        lines.append(
            f"        if ({ups.python_expr(names)}) % ({downs.python_expr(names)}):\n"
            f"            raise ValueError(f\"size {m} is not an integer at c={{c}}, h={{h}}, w={{w}}\")"
        )
    return lines


def _bind(names: list, body: list) -> list:
    """``a, b = self.a, self.b`` for the ``names`` that ``body`` uses (no unused locals in the source)."""
    text = "\n".join(line.split("  # ")[0] for line in body)  # names in the shape comments are not uses
    used = [n for n in names if re.search(rf"\b{n}\b", text)]
    return [f"        {', '.join(used)} = {', '.join('self.' + n for n in used)}"] if used else []


def kernel_source(graph: KernelGraph, sizes: Mapping[int, SizeChoice] | None = None, doc: str = "") -> str:
    """Readable standalone source of a finished kernel.

    Args:
        graph: a finished kernel graph.
        sizes: solved free sizes (defaults to ``graph.sizes``).
        doc: text for the class docstring (for example the kernel hash).

    Raises:
        ValueError: when the graph is unfinished or a free size is unsolved.
    """
    if not graph.is_finished:
        raise ValueError("only a finished kernel has source code; this one still has open branches or the wrong output shape")
    sizes = graph.sizes if sizes is None else sizes
    missing = [s for s in graph.free_symbols if sizes is None or s not in sizes]
    if missing:
        raise ValueError(f"free size {symbol_name(missing[0])} is not solved; run the size solver first")
    sz = _sz_factory(graph)
    nodes = graph.live_nodes()
    free = [symbol_name(s) for s in graph.free_symbols]

    init = ["        super().__init__()", "        self.c, self.h, self.w = c, h, w"]
    for s in graph.free_symbols:
        choice = sizes[s]
        if choice.ratio and choice.exp < 0:
            init.append(
                f"        if c % {2 ** -choice.exp}:\n"
                f"            raise ValueError(f\"size {symbol_name(s)} = {choice} is not a positive integer at c={{c}}\")"
            )
        init.append(f"        self.{symbol_name(s)} = {choice.python_expr('c')}  # {choice}")
    init_head = len(init)  # the free sizes' names are bound here, once we know which are used
    init.extend(_divisibility_checks(graph, sz))
    reset: list = []
    forward: list = []
    helpers = set()
    var = {0: "t0"}
    forward.append("        t0 = x.reshape(n, 1, c, 1, 1, h, w)")
    for node in nodes[1:]:
        shapes = [graph.nodes[i].shape for i in node.inputs]
        wmap = {}
        for wt in node.prim.weights(shapes, node.shape):
            name = weight_name(node.id) if wt.name == "weight" else f"{weight_name(node.id)}_{wt.name}"
            dims = ", ".join(sz(d) for d in wt.dims)
            init.append(f"        self.{name} = nn.Parameter(torch.empty({dims}))")
            if wt.init == "ones":
                reset.append(f"        nn.init.ones_(self.{name})")
            else:
                reset.append(f"        nn.init.uniform_(self.{name}, -(({sz(wt.fan_in)}) ** -0.5), ({sz(wt.fan_in)}) ** -0.5)")
            wmap[wt.name] = f"self.{name}"
        expr = node.prim.emit([var[i] for i in node.inputs], shapes, node.shape, wmap, sz)
        for h in _HELPERS:
            if h + "(" in expr:
                helpers.add(h)
        var[node.id] = f"t{node.id}"
        forward.append(f"        t{node.id} = {expr}  # {node.prim.label()} -> {format_shape(node.shape)}")
    forward.append(f"        return {var[graph.output.id]}.reshape(n, c, h, w)")
    init[init_head:init_head] = _bind(free, init[init_head:])
    forward = ["        n, _, h, w = x.shape", *_bind(["c", *free], forward), *forward]
    if reset:
        reset = [*_bind(["c", *free, "h", "w"], reset), *reset]
        init.append("        self.reset_parameters()")
    else:
        reset = ["        pass"]

    header = [
        '"""A kernel generated by kasrl: a drop-in replacement for a shape-preserving layer.',
        "",
        "Usage: ``layer = Kernel(c, h, w)``; ``layer(x)`` maps ``[N, c, h, w]`` to ``[N, c, h, w]``.",
        '"""',
        "",
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
    ]
    body = []
    for h in sorted(helpers):
        body.append("\n" + _HELPERS[h].rstrip("\n"))
    doc_text = doc or "Generated kernel."
    body.append(
        "\n\nclass Kernel(nn.Module):\n"
        f'    """{doc_text}"""\n\n'
        "    def __init__(self, c: int, h: int, w: int) -> None:\n" + "\n".join(init) + "\n\n"
        "    def reset_parameters(self) -> None:\n" + "\n".join(reset) + "\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n" + "\n".join(forward) + "\n"
    )
    return "\n".join(header) + "\n" + "\n".join(body)
