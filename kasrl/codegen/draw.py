"""A picture of a kernel graph (PNG or SVG), drawn with matplotlib.

Nodes are laid out in layers by depth (input at the top, output at the
bottom), each box names the primitive and its attributes, and each edge is
labelled with the shape of the tensor it carries. Closing nodes (added by the
finishing step) are drawn in grey. Solved sizes are listed under the title.
"""

from __future__ import annotations

from pathlib import Path

from kasrl.ir.graph import KernelGraph
from kasrl.ir.shape import format_shape

__all__ = ["draw_kernel"]

_FAMILY_COLOURS = {
    "projection": "#8ecae6",
    "conv": "#219ebc",
    "mix": "#90be6d",
    "scale": "#b5e48c",
    "unfold": "#ffb703",
    "group": "#fb8500",
    "shift": "#f9c74f",
    "fold": "#f4a261",
    "softmax": "#cdb4db",
    "activation": "#ffafcc",
    "elementwise": "#ffc8dd",
    "binary": "#a2d2ff",
    "bmm": "#bde0fe",
}


def _layers(graph: KernelGraph) -> dict:
    depth = {}
    for n in graph.live_nodes():
        depth[n.id] = 0 if not n.inputs else 1 + max(depth[i] for i in n.inputs)
    return depth


def _positions(graph: KernelGraph, depth: dict) -> dict:
    rows: dict = {}
    for i, d in sorted(depth.items()):
        rows.setdefault(d, []).append(i)
    pos: dict = {}
    for d in sorted(rows):
        ids = rows[d]
        if d > 0:  # order a layer by the mean position of its inputs (fewer crossings)
            ids.sort(key=lambda i: sum(pos[j][0] for j in graph.nodes[i].inputs) / len(graph.nodes[i].inputs))
        width = len(ids)
        for k, i in enumerate(ids):
            pos[i] = (k - (width - 1) / 2.0, -d)
    return pos


def draw_kernel(graph: KernelGraph, path: str | Path, title: str = "") -> Path:
    """Draw ``graph`` to ``path`` (``.png`` or ``.svg``; the suffix picks the format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    path = Path(path)
    depth = _layers(graph)
    pos = _positions(graph, depth)
    n_rows = max(depth.values()) + 1
    n_cols = max(sum(1 for d in depth.values() if d == r) for r in range(n_rows))
    fig_w = max(6.0, 3.2 * n_cols)
    fig_h = max(3.0, 1.25 * n_rows + 1.0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(-n_rows + 0.4, 0.9)
    ax.axis("off")
    box_w, box_h = 0.82, 0.42
    for n in graph.live_nodes():
        x, y = pos[n.id]
        for k, i in enumerate(n.inputs):
            x0, y0 = pos[i]
            ax.annotate(
                "",
                xy=(x, y + box_h / 2),
                xytext=(x0, y0 - box_h / 2),
                arrowprops=dict(arrowstyle="-|>", color="#555555", lw=1.0, shrinkA=0, shrinkB=0),
            )
            label = format_shape(graph.nodes[i].shape)
            if len(n.inputs) == 2 and not n.prim.commutative:
                label = f"{'ab'[k]}: {label}"
            ax.text((x + x0) / 2, (y + y0) / 2, label, fontsize=6.5, ha="center", va="center", color="#333333",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for n in graph.live_nodes():
        x, y = pos[n.id]
        if n.prim is None:
            colour, text = "#e9ecef", "input\n" + format_shape(n.shape)
        else:
            colour = "#dddddd" if n.closing else _FAMILY_COLOURS.get(n.prim.family, "#eeeeee")
            text = n.prim.label().replace("[", "\n", 1).rstrip("]")
        ax.add_patch(FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.02",
                                    fc=colour, ec="#333333", lw=0.8))
        ax.text(x, y, text, fontsize=7, ha="center", va="center")
    out = graph.output
    ox, oy = pos[out.id]
    ax.text(ox, oy - box_h / 2 - 0.2, "output " + format_shape(out.shape), fontsize=7, ha="center", va="top")
    sub = ""
    if graph.sizes:
        from kasrl.ir.dims import symbol_name

        sub = "sizes: " + ", ".join(f"{symbol_name(s)} = {c}" for s, c in sorted(graph.sizes.items()))
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
