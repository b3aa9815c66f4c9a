"""Canonical identity of kernels: structural hashes that ignore build order.

Each node gets a Merkle hash of its primitive, its attributes and its inputs'
hashes (sorted for commutative primitives), so the order in which independent
branches were built, or in which commutative operands were given, does not
matter. The kernel hash is SHA-256 over the *multiset* of node entries, so a
tensor shared by two users (a fork) differs from two identical computations.
The solved hash also folds each node's solved free sizes into its entry.

Hashes use SHA-256 over canonical JSON, never Python's ``hash()``, so they are
stable across processes, platforms and Python versions.
"""

from __future__ import annotations

import hashlib
import json

from kasrl.ir.graph import KernelGraph

__all__ = ["node_hashes", "structure_hash", "kernel_hash", "canonical_order", "short_id"]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _attrs(node) -> dict:
    return {k: v for k, v in node.prim.attrs.items()}


def node_hashes(graph: KernelGraph, with_sizes: bool = False) -> list:
    """Merkle hash of every node (index = node id).

    Memoised on the graph: a node's hash depends only on the nodes before it,
    and nodes are only ever appended, so a later call hashes the new nodes only
    (all of them again when the solved sizes changed)."""
    sizes = graph.sizes or {}
    sizes_key = tuple(sorted(sizes.items())) if with_sizes else None
    memo = graph.__dict__.setdefault("_node_hashes", {})
    known_key, out = memo.get(with_sizes, (None, []))
    if known_key != sizes_key or len(out) > len(graph.nodes):
        out = []
    memo[with_sizes] = (sizes_key, out)
    for n in graph.nodes[len(out):]:
        if n.prim is None:
            out.append(_digest(["input"]))
            continue
        ins = [out[i] for i in n.inputs]
        if n.prim.commutative:
            ins = sorted(ins)
        entry = [n.prim.name, _attrs(n), ins]
        if with_sizes:
            entry.append([str(sizes[s]) if s in sizes else None for s in n.symbols])
        out.append(_digest(entry))
    return list(out)


def _multiset_hash(graph: KernelGraph, with_sizes: bool) -> str:
    hashes = node_hashes(graph, with_sizes)
    live = {n.id for n in graph.live_nodes()}
    entries = sorted(hashes[i] for i in live)
    outputs = sorted(hashes[b] for b in graph.branches)
    return _digest({"nodes": entries, "outputs": outputs})


def structure_hash(graph: KernelGraph) -> str:
    """Identity of the design (the graph without solved sizes)."""
    return _multiset_hash(graph, with_sizes=False)


def kernel_hash(graph: KernelGraph) -> str:
    """Identity of the kernel: structure plus solved sizes (the cache key)."""
    return _multiset_hash(graph, with_sizes=graph.sizes is not None)


def short_id(h: str) -> str:
    """The 16-hex-digit prefix used in file names."""
    return h[:16]


def canonical_order(graph: KernelGraph) -> list:
    """Live node ids in a topological order that does not depend on build order
    (ties broken by Merkle hash)."""
    import heapq

    hashes = node_hashes(graph, with_sizes=graph.sizes is not None)
    live = {n.id for n in graph.live_nodes()}
    indeg = {i: len(graph.nodes[i].inputs) for i in live}
    users: dict = {i: [] for i in live}
    for i in live:
        for j in graph.nodes[i].inputs:
            users[j].append(i)
    heap = [(hashes[i], i) for i in live if indeg[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, (hashes[u], u))
    return order
