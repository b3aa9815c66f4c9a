"""What an evolution run leaves behind: the Pareto front's kernels, a table of them and the Pareto scatter.

:func:`write_front` writes, under the run folder::

    front/<hash>.json   the kernel document      front/<hash>.py   standalone PyTorch source
    front/<hash>.png    its picture              front.json        the front's rows
    pareto.png          objective 0 vs objective 1 of every successful evaluation, front highlighted
    logbook.txt         the DEAP Logbook, one line per generation

and logs ``search/pareto_front`` (a table with each kernel's source) and ``search/pareto``
(the scatter) to the run's tracker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from kasrl.experiment.stats import pareto_front

__all__ = ["front_rows", "generation_metrics", "non_dominated", "plot_pareto", "write_front", "print_front"]

_LABELS = {"speedup": "speedup vs the 3x3 conv network (x)", "accuracy": "test accuracy (%)",
           "inv_flops_ratio": "1 / FLOPs ratio vs 3x3 conv (analytic speed)",
           "params_ratio": "parameter ratio vs 3x3 conv (analytic capacity)"}


def non_dominated(points: Sequence[tuple]) -> list:
    """Indices of the points no other point dominates (both objectives maximised; see :func:`kasrl.experiment.stats.pareto_front`)."""
    front = set(pareto_front(points))
    return [i for i, p in enumerate(points) if (float(p[0]), float(p[1])) in front]


def generation_metrics(record: dict, objectives: tuple) -> dict:
    """A generation's Logbook record as namespaced scalars for the tracker (``evolution/reward_max``...)."""
    out = {"evolution/generation": record["gen"], "evolution/front_size": record["front"], "evolution/repairs": record["repairs"],
           "evolution/best_reward": record["best"], "evolution/nevals": record["nevals"]}
    for name in ("reward", *objectives):
        for stat, v in (record.get(name) or {}).items():
            if stat in ("mean", "std", "min", "max"):
                out[f"evolution/{name}_{stat}"] = float(v)
    return out


def front_rows(front, objectives: tuple) -> list:
    """One dict per front member, sorted by the first objective (best first)."""
    rows = []
    for ind in front:
        rows.append({"hash": ind.hash[:16], objectives[0]: ind.objectives[0], objectives[1]: ind.objectives[1], "reward": ind.reward,
                     "primitives": ind.kernel.n_primitives if ind.kernel is not None else None, "uid": ind.uid, "origin": ind.origin,
                     "actions": list(ind)})
    rows.sort(key=lambda r: (-r[objectives[0]], -r[objectives[1]], r["hash"]))
    return rows


def plot_pareto(points: Sequence[tuple], front: Sequence[tuple], objectives: tuple, path: str | Path, title: str = "") -> Path:
    """Scatter every evaluated point (grey) and the front (red, joined as a staircase); returns ``path``.

    Args:
        points: ``(objective 0, objective 1)`` of every successful evaluation.
        front: the non-dominated points.
        objectives: the two objectives' names (axis labels).
        path: the PNG to write.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=18, c="#9aa0a6", alpha=0.7, label=f"evaluated ({len(points)})")
    if front:
        fx, fy = zip(*sorted(front, key=lambda p: (p[0], -p[1])), strict=True)
        ax.step(fx, fy, where="pre", c="#d62728", lw=1.0, alpha=0.6)
        ax.scatter(fx, fy, s=42, c="#d62728", edgecolors="black", linewidths=0.5, label=f"Pareto front ({len(front)})", zorder=3)
    if objectives[0] in ("speedup", "inv_flops_ratio"):
        ax.axvline(1.0, c="black", lw=0.6, ls=":")
        if all(p[0] > 0 for p in list(points) + list(front)) and points and max(p[0] for p in points) / min(p[0] for p in points) > 20:
            ax.set_xscale("log")
    ax.set_xlabel(_LABELS.get(objectives[0], objectives[0]))
    ax.set_ylabel(_LABELS.get(objectives[1], objectives[1]))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_front(run, strategy) -> list:
    """Write the front's kernels, the table, the scatter and the logbook, and log them (before ``run.finish``).

    Returns:
        The front's rows (see :func:`front_rows`).
    """
    from kasrl.codegen.draw import draw_kernel
    from kasrl.codegen.source import kernel_source
    from kasrl.ir.serialize import save_kernel

    names = strategy.objectives
    front = [ind for ind in strategy.pareto_front if ind.kernel is not None]
    rows = front_rows(front, names)
    by_hash = {ind.hash[:16]: ind for ind in front}
    fdir = run.dir / "front"
    fdir.mkdir(exist_ok=True)
    table_rows = []
    for rank, row in enumerate(rows, 1):
        ind, sid = by_hash[row["hash"]], row["hash"]
        meta = {"objectives": {names[0]: row[names[0]], names[1]: row[names[1]]}, "reward": row["reward"], "run": run.name}
        save_kernel(ind.kernel, fdir / f"{sid}.json", meta=meta)
        src = kernel_source(ind.kernel, doc=f"kasrl kernel {sid}: {names[0]} {row[names[0]]:.3f}, {names[1]} {row[names[1]]:.3f}")
        (fdir / f"{sid}.py").write_text(src)
        draw_kernel(ind.kernel, fdir / f"{sid}.png", f"front #{rank} {sid}: {names[0]} {row[names[0]]:.3f}, {names[1]} {row[names[1]]:.3f}")
        table_rows.append([rank, sid, row[names[0]], row[names[1]], row["reward"], row["primitives"] or 0, row["uid"], src])
    (run.dir / "front.json").write_text(json.dumps(rows, indent=1))
    run.tracker.log_table("search/pareto_front", ["rank", "hash", *names, "reward", "primitives", "born", "source"], table_rows)

    points = [tuple(h["objectives"]) for h in run.evaluator.history if h.get("status") == "ok" and len(h.get("objectives", ())) == 2]
    points = [p for p in points if all(math.isfinite(v) for v in p)]
    front_points = [(r[names[0]], r[names[1]]) for r in rows]
    title = f"{run.name}\n{len(points)} successful evaluations, {len(front_points)} on the Pareto front"
    png = plot_pareto(points, front_points, names, run.dir / "pareto.png", title)
    run.tracker.log_image("search/pareto", png, caption=f"{names[0]} vs {names[1]}")
    (run.dir / "logbook.txt").write_text(str(strategy.logbook) + "\n")

    return rows


def print_front(rows: list, objectives: tuple, title: str, width: int = 120) -> None:
    """Print the front's rows as a table (after the progress bar has closed)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "kernel", objectives[0], objectives[1], "reward", "primitives", "born"):
        table.add_column(col, justify="right")
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), row["hash"], f"{row[objectives[0]]:.3f}", f"{row[objectives[1]]:.3f}", f"{row['reward']:.3f}",
                      str(row["primitives"]), f"#{row['uid']} ({row['origin']})")
    Console(width=width).print(table)
