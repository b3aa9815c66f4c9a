"""Competition reports: curves, fronts, rank tests and ``report.md``.

Input: one summary per (strategy, seed) run — its history (one row per
evaluation, as :meth:`kasrl.experiment.budget.ResultRecord.summary`) and its
best kernels. Output (in the report folder): ``best_so_far.png``,
``pareto.png``, ``summary.json`` and ``report.md`` (the page a person reads
first).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

__all__ = ["pareto_front", "hypervolume", "best_so_far_curve", "evaluations_to_reach", "rank_test", "write_report"]


def pareto_front(points: list) -> list:
    """The non-dominated points (both objectives maximised), sorted by the first."""
    pts = sorted(set((float(a), float(b)) for a, b in points), key=lambda p: (-p[0], -p[1]))
    front, best_b = [], -math.inf
    for a, b in pts:
        if b > best_b:
            front.append((a, b))
            best_b = b
    return sorted(front)


def hypervolume(front: list, ref: tuple = (0.0, 0.0)) -> float:
    """Area dominated by a 2-objective front (maximised) above the reference point."""
    pts = [p for p in pareto_front(front) if p[0] > ref[0] and p[1] > ref[1]]
    pts.sort(key=lambda p: -p[0])
    area, prev_b = 0.0, ref[1]
    for a, b in pts:
        if b > prev_b:
            area += (a - ref[0]) * (b - prev_b)
            prev_b = b
    return area


def best_so_far_curve(history: list, length: int) -> list:
    """Best reward after each of ``length`` evaluations (carried forward past the end)."""
    out, best = [], -math.inf
    for i in range(length):
        if i < len(history):
            best = max(best, history[i]["reward"])
        out.append(best)
    return out


def evaluations_to_reach(history: list, target: float) -> int | None:
    """The first evaluation whose best-so-far reaches ``target`` (None if never)."""
    for row in history:
        if row["best_reward"] >= target:
            return int(row["evaluation"])
    return None


def rank_test(values: list, baseline: list) -> float:
    """One-sided Mann-Whitney U p-value that ``values`` are larger than ``baseline``
    (exact for small samples; 1.0 when a side is empty)."""
    if not values or not baseline:
        return 1.0
    from scipy.stats import mannwhitneyu

    if len(set(values) | set(baseline)) == 1:
        return 1.0
    return float(mannwhitneyu(values, baseline, alternative="greater", method="auto").pvalue)


def _objectives(history: list) -> list:
    return [tuple(r["objectives"]) for r in history if r["status"] == "ok" and r.get("objectives")]


def _plot_curves(curves: dict, path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in curves.items():
        n = max(len(r) for r in runs)
        xs = list(range(1, n + 1))
        cols = [[r[i] if i < len(r) else r[-1] for r in runs] for i in range(n)]
        med = [statistics.median(c) for c in cols]
        lo = [min(c) for c in cols]
        hi = [max(c) for c in cols]
        (line,) = ax.plot(xs, med, label=f"{name} (median of {len(runs)})")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("evaluations")
    ax.set_ylabel(ylabel)
    ax.set_title("best-so-far reward (median, range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fronts(points: dict, fronts: dict, path: Path, labels: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in points.items():
        if not pts:
            continue
        sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.35, label=f"{name} evaluations")
        f = fronts[name]
        ax.step([p[0] for p in f], [p[1] for p in f], where="post", color=sc.get_facecolor()[0], alpha=0.9)
    pooled = pareto_front([p for pts in points.values() for p in pts])
    if pooled:
        ax.plot([p[0] for p in pooled], [p[1] for p in pooled], "k--", lw=1, label="pooled front")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title("Pareto fronts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs: list, folder: Path, title: str, budget: int, command: str, fidelity: str = "measured") -> dict:
    """Write the report files for ``runs`` (dicts with strategy, seed, history, best, dir).

    Returns the summary dict (also written as ``summary.json``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    strategies = list(dict.fromkeys(r["strategy"] for r in runs))
    by = {s: [r for r in runs if r["strategy"] == s] for s in strategies}
    curves = {s: [best_so_far_curve(r["history"], budget) for r in rs] for s, rs in by.items()}
    labels = ("speedup", "accuracy (%)") if fidelity == "measured" else ("1 / FLOPs ratio", "params ratio")
    points = {s: [p for r in rs for p in _objectives(r["history"])] for s, rs in by.items()}
    fronts = {s: pareto_front(p) for s, p in points.items()}
    pooled = pareto_front([p for ps in points.values() for p in ps])
    finals = {s: [max((h["reward"] for h in r["history"]), default=-math.inf) for r in rs] for s, rs in by.items()}
    base = "random" if "random" in by else strategies[0]
    random_final = statistics.median(finals[base]) if finals[base] else -math.inf
    rows = []
    for s in strategies:
        rs = by[s]
        bests = [r["best"] for r in rs if r.get("best")]
        reach = [evaluations_to_reach(r["history"], random_final) for r in rs]
        reached = [x for x in reach if x is not None]
        rows.append({
            "strategy": s,
            "seeds": len(rs),
            "best_reward_median": statistics.median(finals[s]) if finals[s] else float("nan"),
            "best_reward_range": [min(finals[s]), max(finals[s])] if finals[s] else [],
            "speedup_of_best": statistics.median([b["speedup"] for b in bests if b.get("speedup") is not None]) if any(b.get("speedup") is not None for b in bests) else None,
            "accuracy_of_best": statistics.median([b["accuracy"] for b in bests if b.get("accuracy") is not None]) if any(b.get("accuracy") is not None for b in bests) else None,
            "evaluations_spent": [len(r["history"]) for r in rs],
            "evals_to_reach_random_best": statistics.median(reached) if reached else None,
            "reached_in": f"{len(reached)}/{len(rs)}",
            "hypervolume": hypervolume(fronts[s]),
            "p_vs_random": rank_test(finals[s], finals[base]) if s != base else None,
        })
    _plot_curves(curves, folder / "best_so_far.png", "best reward")
    _plot_fronts(points, fronts, folder / "pareto.png", labels)
    summary = {"title": title, "budget": budget, "command": command, "rows": rows, "pooled_front": pooled,
               "pooled_hypervolume": hypervolume(pooled), "fronts": fronts, "random_final_median": random_final}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (folder / "report.md").write_text(_markdown(summary, runs, labels, folder))
    return summary


def _f(v, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def markdown_table(summary: dict) -> str:
    """The competition table (also pasted into README.md)."""
    lines = ["| strategy | seeds | best reward (median, range) | speedup of best | accuracy of best | evals to reach random's best | hypervolume | p (beats random) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        rng = r["best_reward_range"]
        lines.append(
            f"| {r['strategy']} | {r['seeds']} | {_f(r['best_reward_median'])} ({_f(rng[0] if rng else None)} .. {_f(rng[1] if rng else None)}) "
            f"| {_f(r['speedup_of_best'], '{:.3f}x')} | {_f(r['accuracy_of_best'], '{:.2f}%')} "
            f"| {_f(r['evals_to_reach_random_best'], '{:.0f}')} ({r['reached_in']}) | {_f(r['hypervolume'], '{:.4g}')} "
            f"| {_f(r['p_vs_random'], '{:.3f}')} |"
        )
    return "\n".join(lines)


def _best_kernels(runs: list, folder: Path, n: int = 5) -> str:
    """Copy the ``n`` best distinct kernels into ``folder/kernels`` and list them, the first with its source inline."""
    import shutil

    found: dict = {}
    for r in sorted((r for r in runs if r.get("best")), key=lambda r: -r["best"]["reward"]):
        found.setdefault(r["best"]["hash"], []).append(r)
    out = folder / "kernels"
    lines = []
    for h, rs in list(found.items())[:n]:
        out.mkdir(exist_ok=True)
        for ext in ("json", "py", "png"):
            src = Path(rs[0]["dir"]) / "kernels" / f"{h}.{ext}"
            if src.is_file():
                shutil.copyfile(src, out / src.name)
        b = rs[0]["best"]
        who = ", ".join(f"{r['strategy']} seed {r['seed']}" for r in rs)
        lines.append(f"- `{h}` (found by {who}): reward {b['reward']:.3f}, speedup {_f(b.get('speedup'), '{:.3f}x')}, "
                     f"accuracy {_f(b.get('accuracy'), '{:.2f}%')} — [json](kernels/{h}.json), [source](kernels/{h}.py), "
                     f"![{h}](kernels/{h}.png)")
    best_source = out / f"{next(iter(found), '')}.py"
    if found and best_source.is_file():
        lines += ["", "The best kernel's source:", "", "```python", best_source.read_text().rstrip(), "```"]
    return "\n".join(lines) or "No kernel succeeded."


def _spent(summary: dict) -> str:
    return "; ".join(f"{r['strategy']} {'/'.join(map(str, r['evaluations_spent']))}" for r in summary["rows"])


def _markdown(summary: dict, runs: list, labels: tuple, folder: Path) -> str:
    kernels = _best_kernels(runs, folder)
    return f"""# {summary['title']}

Every strategy x seed had the same budget: {summary['budget']} evaluations or the same time cap, whichever ran out first.
A cache hit costs its unit and is charged, against the cap, the seconds its stages took when they were measured.
Evaluations spent per seed: {_spent(summary)}.

{markdown_table(summary)}

- *evals to reach random's best*: median over seeds of the first evaluation whose best-so-far reached the random
  sampler's median final best ({_f(summary['random_final_median'])}); in brackets, how many seeds got there.
- *p*: one-sided Mann-Whitney U test over seeds that the strategy's final best rewards are larger than random's
  (with 3 seeds per side the smallest possible p is 0.05).
- *hypervolume*: area dominated by the strategy's Pareto front of ({labels[0]}, {labels[1]}) above (0, 0);
  pooled front hypervolume {_f(summary['pooled_hypervolume'], '{:.4g}')}.

![best-so-far](best_so_far.png)

![Pareto fronts](pareto.png)

## Best kernels

{kernels}

Reproduce: `{summary['command']}`
"""
