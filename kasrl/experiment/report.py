"""Competition reports: the table, the anytime plot, the fronts and ``report.md``.

Input: one summary per (strategy, seed) run (see ``compete.py``): its history
(one row per evaluation, :meth:`kasrl.experiment.budget.ResultRecord.summary`),
its best kernels, the confirmed reward of its best (retrained over seeds, paired
with the baseline; :mod:`kasrl.eval.confirm`) and its strategy's matched baseline.
Output (in the report folder): ``anytime.png``, ``pareto.png``, ``summary.json``
and ``report.md`` (the page a person reads first). The statistics are those of
:mod:`kasrl.experiment.stats`:

* per seed, the best *confirmed* reward (a run's single-seed best ranks noise);
* one-sided Mann-Whitney U that a contender's per-seed values exceed its matched
  baseline's (the strategy that draws from the same starting distribution), with
  Holm's correction over the contenders compared with that baseline;
* hypervolume per seed of (speedup, accuracy) against the reference point
  (speedup 1, baseline accuracy minus the reward's tolerance), median over seeds;
* the share of each strategy's fully evaluated kernels that beat the baseline
  network on both speed and accuracy;
* the anytime curve: best-so-far reward against seconds of evaluation, median
  and range over seeds.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from kasrl.experiment.stats import anytime, band, holm, hypervolume, mann_whitney_greater, pareto_front, share_better

__all__ = ["write_report", "markdown_table", "summarise"]

ALPHA = 0.05


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def _points(history: list) -> list:
    """(speedup, accuracy) of the fully evaluated kernels of a run."""
    return [tuple(h["objectives"]) for h in history if h["status"] == "ok" and len(h.get("objectives", ())) == 2]


def _per_seed_best(run: dict) -> float:
    """The run's best confirmed reward (its best run reward when nothing was confirmed)."""
    confirmed = [c["confirmed_reward"] for c in run.get("confirmed") or []]
    if confirmed:
        return max(confirmed)
    return max((h["reward"] for h in run["history"] if h["status"] == "ok"), default=-math.inf)


def summarise(runs: list, reference: tuple | None = None) -> dict:
    """The competition's numbers (see the module docstring); ``reference``: the hypervolume's reference point."""
    strategies = list(dict.fromkeys(r["strategy"] for r in runs))
    by = {s: [r for r in runs if r["strategy"] == s] for s in strategies}
    best = {s: [_per_seed_best(r) for r in rs] for s, rs in by.items()}
    rows = []
    for s in strategies:
        rs = by[s]
        base = rs[0].get("baseline")
        bests = [b for b in (max(r.get("confirmed") or [{}], key=lambda c: c.get("confirmed_reward", -math.inf)) for r in rs) if b]
        hv = [hypervolume(_points(r["history"]), reference) for r in rs] if reference else []
        pts = [p for r in rs for p in _points(r["history"])]
        row = {
            "strategy": s,
            "baseline": base,
            "seeds": len(rs),
            "best": best[s],
            "best_median": _median(best[s]),
            "best_range": [min(best[s]), max(best[s])] if best[s] else [],
            "speedup_of_best": _median([b.get("speedup") for b in bests]),
            "accuracy_of_best": _median([b.get("accuracy_mean") for b in bests]),
            "gap_of_best": _median([b.get("gap_mean") for b in bests]),
            "judged": [len(r["history"]) for r in rs],
            "trained": [sum(1 for h in r["history"] if h["status"] == "ok") for r in rs],
            "seconds": [round(r["history"][-1]["seconds"]) if r["history"] else 0 for r in rs],
            "hypervolume": hv,
            "hypervolume_median": _median(hv),
            "share_better": share_better(pts, reference) if reference else None,
            "p": None,
            "p_holm": None,
        }
        if base and base in best and base != s:
            row["p"] = mann_whitney_greater(best[s], best[base])
        rows.append(row)
    for base in {r["baseline"] for r in rows if r["p"] is not None}:  # Holm over the contenders of each baseline
        group = [r for r in rows if r["baseline"] == base and r["p"] is not None]
        for r, adj in zip(group, holm([r["p"] for r in group]), strict=True):
            r["p_holm"] = adj
    return {"rows": rows, "reference": list(reference) if reference else None}


def _plot_anytime(by: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    end = max((r["history"][-1]["seconds"] for rs in by.values() for r in rs if r["history"]), default=1.0)
    grid = [end * i / 200 for i in range(201)]
    for name, rs in by.items():
        curves = [anytime([h for h in r["history"] if h["status"] == "ok"]) for r in rs]
        med, lo, hi = band(curves, grid)
        xs = [t for t, m in zip(grid, med, strict=True) if m is not None]
        if not xs:
            continue
        keep = [i for i, m in enumerate(med) if m is not None]
        (line,) = ax.step(xs, [med[i] for i in keep], where="post", label=f"{name} (median of {len(rs)})")
        ax.fill_between(xs, [lo[i] for i in keep], [hi[i] for i in keep], step="post", color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("seconds of evaluation")
    ax.set_ylabel("best reward so far (fully evaluated kernels)")
    ax.set_title("anytime: median and range over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fronts(by: dict, path: Path, labels: tuple, reference: tuple | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for name, rs in by.items():
        pts = [p for r in rs for p in _points(r["history"])]
        if not pts:
            continue
        sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.35, label=f"{name}")
        front = pareto_front(pts)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=sc.get_facecolor()[0], alpha=0.9)
    if reference:
        ax.axvline(reference[0], color="k", lw=0.8, ls="--")
        ax.axhline(reference[1], color="k", lw=0.8, ls="--", label="reference point")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title("fully evaluated kernels and each strategy's Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _verdict(r: dict) -> str:
    if r["p_holm"] is None:
        return "(baseline)" if r["baseline"] in (None, r["strategy"]) else "-"
    return "**yes**" if r["p_holm"] < ALPHA else "no"


def markdown_table(summary: dict) -> str:
    """The competition table (also pasted into README.md)."""
    head = ["strategy", "matched baseline", "seeds", "kernels judged / trained (median)", "best confirmed reward (median, range)",
            "speedup / accuracy of best", "hypervolume (median)", "kernels better on both", "p (one-sided)", "p (Holm)",
            "beats its baseline?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        rng = r["best_range"]
        lines.append(
            f"| {r['strategy']} | {r['baseline'] or '-'} | {r['seeds']} | {_f(_median(r['judged']), '{:.0f}')} / "
            f"{_f(_median(r['trained']), '{:.0f}')} | {_f(r['best_median'])} "
            f"({_f(rng[0] if rng else None)} .. {_f(rng[1] if rng else None)}) "
            f"| {_f(r['speedup_of_best'], '{:.3f}x')} / {_f(r['accuracy_of_best'], '{:.2f}%')} | {_f(r['hypervolume_median'], '{:.3g}')} "
            f"| {_f(r['share_better'], '{:.0%}')} | {_f(r['p'], '{:.3f}')} | {_f(r['p_holm'], '{:.3f}')} | {_verdict(r)} |"
        )
    return "\n".join(lines)


def _best_kernels(runs: list, folder: Path, n: int = 5) -> str:
    """Copy the ``n`` best distinct confirmed kernels into ``folder/kernels`` and list them."""
    found: dict = {}
    for r in runs:
        for c in r.get("confirmed") or []:
            found.setdefault(c["hash"][:16], []).append((r, c))
    ranked = sorted(found.items(), key=lambda kv: -max(c["confirmed_reward"] for _, c in kv[1]))[:n]
    out = folder / "kernels"
    lines = []
    for h, pairs in ranked:
        out.mkdir(exist_ok=True)
        r, c = max(pairs, key=lambda rc: rc[1]["confirmed_reward"])
        for ext in ("json", "py", "png"):
            src = Path(r["dir"]) / "kernels" / f"{h}.{ext}"
            if src.is_file():
                shutil.copyfile(src, out / src.name)
        who = ", ".join(f"{rr['strategy']} seed {rr['seed']}" for rr, _ in pairs)
        lines.append(f"- `{h}` (found by {who}): confirmed reward {c['confirmed_reward']:.3f}, speedup {c['speedup']:.3f}x, "
                     f"accuracy {c['accuracy_mean']:.2f} +- {c['accuracy_sd']:.2f}% over {len(c['seeds'])} seeds "
                     f"({c['gap_mean']:+.2f} +- {c['gap_sd']:.2f} pt below the baseline, paired) — [json](kernels/{h}.json), "
                     f"[source](kernels/{h}.py), "
                     f"![{h}](kernels/{h}.png)")
    if ranked and (out / f"{ranked[0][0]}.py").is_file():
        lines += ["", "The best kernel's source:", "", "```python", (out / f"{ranked[0][0]}.py").read_text().rstrip(), "```"]
    return "\n".join(lines) or "No kernel was confirmed."


def _statement(summary: dict) -> str:
    yes = [r["strategy"] for r in summary["rows"] if r["p_holm"] is not None and r["p_holm"] < ALPHA]
    no = [r["strategy"] for r in summary["rows"] if r["p_holm"] is not None and r["p_holm"] >= ALPHA]
    parts = []
    if yes:
        parts.append(f"Beyond seed noise (Holm-corrected one-sided Mann-Whitney, p < {ALPHA}), {', '.join(yes)} "
                     "beat their matched baseline.")
    if no:
        parts.append(f"Within seed noise at this budget: {', '.join(no)} (no claim that they beat their matched baseline).")
    return " ".join(parts) or "No contender was compared with a baseline."


def write_report(runs: list, folder: Path, title: str, command: str, fidelity: str = "measured", reference: tuple | None = None,
                 budget_text: str = "") -> dict:
    """Write the report files for ``runs``; returns the summary (also written as ``summary.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, reference)
    summary.update(title=title, command=command, budget=budget_text, statement=_statement(summary))
    by = {s: [r for r in runs if r["strategy"] == s] for s in dict.fromkeys(r["strategy"] for r in runs)}
    labels = ("speedup (x)", "accuracy (%)") if fidelity == "measured" else ("1 / FLOPs ratio", "params ratio")
    _plot_anytime(by, folder / "anytime.png")
    _plot_fronts(by, folder / "pareto.png", labels, tuple(reference[:2]) if reference else None)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    ref = (f"(speedup {reference[0]:g}, accuracy {reference[1]:.2f}%: the baseline's minus the reward's tolerance)" if reference
           else "(none)")
    seeds = ", ".join(sorted({str(len(c["seeds"])) for r in runs for c in r.get("confirmed") or []})) or "-"
    (folder / "report.md").write_text(f"""# {title}

{budget_text}

{markdown_table(summary)}

{summary['statement']}

- *best confirmed reward*: per seed, the best of the run's best kernels after retraining over seeds on the whole test
  split, paired with the baseline network ({seeds}
  seeds); median and range over the seeds.
- *p*: one-sided Mann-Whitney U that the strategy's per-seed best confirmed rewards exceed its matched baseline's
  (the baseline that starts from the same distribution); *p (Holm)* corrects for the contenders sharing that baseline.
- *hypervolume*: per seed, the area of (speedup, accuracy) its fully evaluated kernels dominate beyond the reference
  point {ref}; median over seeds.
- *kernels better on both*: the share of all fully evaluated kernels faster than the baseline network and within the
  tolerance of its accuracy.

![anytime](anytime.png)

![Pareto fronts](pareto.png)

## Best kernels

{_best_kernels(runs, folder)}

Reproduce: `{command}`
""")
    return summary
