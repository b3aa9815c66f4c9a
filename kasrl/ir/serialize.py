"""The versioned JSON document of a kernel.

A document lists the live nodes in canonical order (see
:func:`kasrl.ir.canonical.canonical_order`), each with its primitive name,
attributes, input node ids and output shape, plus the solved free sizes::

    {"schema": "kasrl.kernel", "version": 1,
     "nodes": [{"id": 0, "op": "input", "shape": "[1, C, 1, 1, H, W]"},
               {"id": 1, "op": "unfold", "attrs": {"axes": "HW", "dilation": 1, "k": 3},
                "inputs": [0], "shape": "[1, C, 3, 3, H, W]"}, ...],
     "output": 2, "sizes": {"x0": "C/2"}, "hash": "...", "structure_hash": "..."}

Loading never executes anything from the document: primitive names are looked
up in a registry, attributes are checked against each primitive's allowed
values, shapes are recomputed and compared as text, and sizes must match a
strict pattern. Any problem raises :class:`~kasrl.errors.KernelDocumentError`
with one line naming the node and field at fault.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from kasrl.errors import IllegalAction, KernelDocumentError, SchemaVersionError
from kasrl.ir.canonical import canonical_order, kernel_hash, structure_hash
from kasrl.ir.dims import free_symbol, symbol_name
from kasrl.ir.graph import KernelGraph
from kasrl.ir.primitives import PRIMITIVES, SpaceContext
from kasrl.ir.shape import format_shape
from kasrl.ir.sizes import SizeChoice

__all__ = ["SCHEMA", "VERSION", "to_document", "from_document", "save_kernel", "load_kernel", "dumps", "loads"]

SCHEMA = "kasrl.kernel"
VERSION = 1
_SIZE = re.compile(r"^(?:C(?:([*/])(\d+))?|(\d+))$")
_TOP_KEYS = {"schema", "version", "nodes", "output", "open", "sizes", "hash", "structure_hash", "meta"}
_NODE_KEYS = {"id", "op", "attrs", "inputs", "shape", "closing"}
_MAX_NODES = 10_000


def _size_text(choice: SizeChoice) -> str:
    return str(choice)


def _parse_size(text: Any, where: str) -> SizeChoice:
    if not isinstance(text, str) or len(text) > 32:
        raise KernelDocumentError(f"{where}: a size must be a string such as 'C', 'C/4', 'C*2' or '8', got {text!r}")
    m = _SIZE.match(text)
    if not m:
        raise KernelDocumentError(f"{where}: {text!r} is not a size ('C', 'C/<power of 2>', 'C*<power of 2>' or '<power of 2>')")
    op, num, const = m.groups()
    value = int(const if const is not None else (num or 1))
    if value < 1 or value & (value - 1):
        raise KernelDocumentError(f"{where}: {text!r} must use a power of two")
    exp = value.bit_length() - 1
    if const is not None:
        return SizeChoice(False, exp)
    return SizeChoice(True, -exp if op == "/" else exp)


def to_document(graph: KernelGraph, meta: dict | None = None) -> dict:
    """The JSON-ready document of a kernel (finished or not; sizes when solved)."""
    order = canonical_order(graph)
    new_id = {old: new for new, old in enumerate(order)}
    rename = {}
    for old in order:
        for s in graph.nodes[old].symbols:
            rename[s] = free_symbol(len(rename))
    nodes = []
    for old in order:
        n = graph.nodes[old]
        shape = format_shape(tuple(m.rename(rename) for m in n.shape))
        if n.prim is None:
            nodes.append({"id": new_id[old], "op": "input", "shape": shape})
            continue
        inputs = [new_id[i] for i in n.inputs]
        if n.prim.commutative:
            inputs.sort()
        entry = {"id": new_id[old], "op": n.prim.name, "attrs": dict(n.prim.attrs), "inputs": inputs, "shape": shape}
        if n.closing:
            entry["closing"] = True
        nodes.append(entry)
    doc: dict = {"schema": SCHEMA, "version": VERSION, "nodes": nodes}
    if len(graph.branches) == 1:
        doc["output"] = new_id[graph.branches[0]]
    else:
        doc["open"] = [new_id[b] for b in graph.branches]
    if graph.sizes is not None:
        doc["sizes"] = {symbol_name(rename[s]): _size_text(c) for s, c in sorted(graph.sizes.items(), key=lambda kv: rename[kv[0]])}
    doc["hash"] = kernel_hash(graph)
    doc["structure_hash"] = structure_hash(graph)
    if meta:
        doc["meta"] = meta
    return doc


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise KernelDocumentError(message)


def from_document(doc: Any, ctx: SpaceContext | None = None, source: str = "document") -> KernelGraph:
    """Rebuild a finished kernel from a document, validating everything.

    Raises:
        SchemaVersionError: for a different schema or version.
        KernelDocumentError: naming the node and field that is wrong.
    """
    _require(isinstance(doc, dict), f"{source}: the top level must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise SchemaVersionError(f"{source}: `schema` must be {SCHEMA!r}, got {doc.get('schema')!r}")
    if doc.get("version") != VERSION:
        raise SchemaVersionError(f"{source}: `version` {doc.get('version')!r} is not supported (this kasrl reads version {VERSION})")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise KernelDocumentError(f"{source}: unknown key `{unknown[0]}`")
    _require("open" not in doc, f"{source}: holds an unfinished kernel (open branches {doc.get('open')}); only finished kernels load")
    nodes = doc.get("nodes")
    _require(isinstance(nodes, list) and 1 < len(nodes) <= _MAX_NODES, f"{source}: `nodes` must be a list of 2 to {_MAX_NODES} nodes")
    g = KernelGraph(ctx or SpaceContext())
    for pos, node in enumerate(nodes):
        where = f"{source}: node {pos}"
        _require(isinstance(node, dict), f"{where}: must be an object")
        unknown = sorted(set(node) - _NODE_KEYS)
        if unknown:
            raise KernelDocumentError(f"{where}: unknown key `{unknown[0]}`")
        _require(node.get("id") == pos and type(node.get("id")) is int, f"{where}: `id` must be {pos} (nodes are listed in id order)")
        op = node.get("op")
        _require(isinstance(op, str), f"{where}: `op` must be a string")
        shape = node.get("shape")
        _require(isinstance(shape, str) and len(shape) < 400, f"{where}: `shape` must be a string such as '[1, C, 1, 1, H, W]'")
        if pos == 0:
            _require(op == "input", f"{where}: the first node must be the input, got op {op!r}")
            _require(shape == format_shape(g.nodes[0].shape),
                     f"{where}: `shape` {shape!r} is not the input shape {format_shape(g.nodes[0].shape)!r}")
            continue
        _require(op in PRIMITIVES, f"{where}: unknown primitive {op!r}; known: {', '.join(sorted(PRIMITIVES))}")
        attrs = node.get("attrs", {})
        _require(isinstance(attrs, dict), f"{where}: `attrs` must be an object")
        try:
            prim = PRIMITIVES[op](**attrs)
        except (TypeError, ValueError) as e:
            raise KernelDocumentError(f"{where} ({op}): {e}") from None
        inputs = node.get("inputs")
        _require(
            isinstance(inputs, list) and all(type(i) is int for i in inputs),
            f"{where}: `inputs` must be a list of node ids",
        )
        _require(all(0 <= i < pos for i in inputs), f"{where}: `inputs` {inputs} must refer to earlier nodes")
        closing = node.get("closing", False)
        _require(isinstance(closing, bool), f"{where}: `closing` must be true or false")
        try:
            n = g.add_node(prim, inputs, closing)
        except IllegalAction as e:
            raise KernelDocumentError(f"{where}: {e}") from None
        got = format_shape(n.shape)
        _require(shape == got, f"{where} ({op}): declared shape {shape!r} does not match the computed shape {got!r}")
    out = doc.get("output")
    _require(type(out) is int and out == len(nodes) - 1,
             f"{source}: `output` must be the id of the last node ({len(nodes) - 1}), got {out!r}")
    _require(len(g.branches) == 1, f"{source}: nodes {[b for b in g.branches if b != out]} are computed but never used")
    _require(g.is_finished, f"{source}: the output shape {format_shape(g.output.shape)} is not [1, C, 1, 1, H, W]")
    sizes = doc.get("sizes")
    if sizes is not None:
        _require(isinstance(sizes, dict), f"{source}: `sizes` must be an object mapping x0, x1, ... to sizes")
        expected = {symbol_name(s) for s in g.free_symbols}
        _require(set(sizes) == expected, f"{source}: `sizes` must name exactly {sorted(expected) or 'no sizes'}, got {sorted(sizes)}")
        g.sizes = {free_symbol(int(k[1:])): _parse_size(v, f"{source}: size {k}") for k, v in sizes.items()}
    stated = doc.get("hash")
    if stated is not None:
        _require(isinstance(stated, str), f"{source}: `hash` must be a string")
        actual = kernel_hash(g)
        _require(stated == actual,
                 f"{source}: `hash` {stated[:16]}... does not match the kernel ({actual[:16]}...): the document was edited")
    return g


def dumps(graph: KernelGraph, meta: dict | None = None) -> str:
    """The document as JSON text, one node per line."""
    doc = to_document(graph, meta)
    lines = ["{"]
    for key, value in doc.items():
        if key == "nodes":
            body = ",\n".join("    " + json.dumps(n) for n in value)
            lines.append(f'  "nodes": [\n{body}\n  ],')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


def loads(text: str, source: str = "document", ctx: SpaceContext | None = None) -> KernelGraph:
    """Parse and validate document text.

    Raises:
        KernelDocumentError: for text that is not JSON or not a valid kernel.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise KernelDocumentError(f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); truncated file?") from None
    return from_document(doc, ctx, source)


def save_kernel(graph: KernelGraph, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the document atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(graph, meta))
    os.replace(tmp, path)
    return path


def load_kernel(path: str | os.PathLike, ctx: SpaceContext | None = None) -> KernelGraph:
    """Read and validate a kernel document file.

    Raises:
        KernelDocumentError: when the file is missing, unreadable or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise KernelDocumentError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    return loads(text, str(path), ctx)
