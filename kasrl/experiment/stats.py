"""Statistics of a competition: fronts, hypervolume, rank tests with Holm's correction, anytime curves.

Everything here works on plain numbers (one value per seed, one point per kernel),
so it is tested on planted results (tests/experiment/test_stats.py).

* :func:`pareto_front`, :func:`hypervolume` -- two maximised objectives; the
  hypervolume is taken per seed against a reference point (for the measured
  reward: speedup 1.0 and the baseline's accuracy minus the reward's tolerance, so
  only kernels better than the layer they replace on both counts add area);
* :func:`mann_whitney_greater` -- one-sided Mann-Whitney U that a contender's
  per-seed values exceed its matched baseline's;
* :func:`holm` -- Holm's step-down correction of the p-values of several contenders
  compared with one baseline (controls the family-wise error rate);
* :func:`anytime` -- a best-so-far curve against seconds, and its median and range
  over seeds on a common grid.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["pareto_front", "hypervolume", "mann_whitney_greater", "holm", "anytime", "band", "share_better"]


def _finite_points(points: Sequence[tuple]) -> list:
    return sorted({(float(a), float(b)) for a, b in points if math.isfinite(a) and math.isfinite(b)})


def pareto_front(points: Sequence[tuple]) -> list:
    """The non-dominated points of ``points`` (both objectives maximised), sorted by the first
    (``moocore.is_nondominated``, what DEAP's own indicators use).

    >>> pareto_front([(1, 3), (2, 2), (1.5, 1), (3, 1)])
    [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    """
    import moocore
    import numpy as np

    pts = _finite_points(points)
    if not pts:
        return []
    keep = moocore.is_nondominated(np.array(pts), maximise=True)
    return [p for p, k in zip(pts, keep, strict=True) if k]


def hypervolume(points: Sequence[tuple], ref: tuple) -> float:
    """Area dominated by ``points`` (both maximised) and dominating the reference point ``ref``
    (``moocore.hypervolume``). Points that do not beat ``ref`` on both objectives add nothing.

    >>> hypervolume([(2.0, 3.0), (3.0, 2.0)], (1.0, 1.0))
    3.0
    """
    import moocore
    import numpy as np

    pts = [p for p in _finite_points(points) if p[0] > ref[0] and p[1] > ref[1]]
    if not pts:
        return 0.0
    return float(moocore.hypervolume(np.array(pts), ref=[float(ref[0]), float(ref[1])], maximise=True))


def mann_whitney_greater(values: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that ``values`` tend to exceed ``baseline``
    (exact for small samples; 1.0 when a side is empty or every value ties)."""
    if not values or not baseline or len(set(values) | set(baseline)) == 1:
        return 1.0
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(list(values), list(baseline), alternative="greater", method="auto").pvalue)


def holm(pvalues: Sequence[float]) -> list:
    """Holm's step-down adjusted p-values (same order as given).

    The i-th smallest of m p-values is multiplied by ``m - i`` (0-based i), kept
    monotone, and capped at 1; rejecting where the adjusted value is below alpha
    controls the chance of any false claim at alpha.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = round(running, 12)
    return out


def anytime(rows: Sequence[dict], key: str = "reward", clock: str = "seconds") -> list:
    """``[(seconds, best so far), ...]`` of one run's history rows (one point per improvement)."""
    out, best = [], -math.inf
    for row in rows:
        value = row.get(key)
        if value is None or not math.isfinite(value):
            continue
        if value > best:
            best = value
            out.append((float(row[clock]), best))
    return out


def band(curves: Sequence[list], grid: Sequence[float]) -> tuple:
    """Median, min and max over runs of step curves (:func:`anytime`) on ``grid``.

    Before a run's first point its value is undefined; such runs are left out at that
    time (None where no run has a value yet).
    """
    med, lo, hi = [], [], []
    for t in grid:
        vals = []
        for curve in curves:
            v = None
            for x, y in curve:
                if x <= t:
                    v = y
                else:
                    break
            if v is not None:
                vals.append(v)
        med.append(statistics.median(vals) if vals else None)
        lo.append(min(vals) if vals else None)
        hi.append(max(vals) if vals else None)
    return med, lo, hi


def share_better(points: Sequence[tuple], ref: tuple) -> float:
    """The fraction of ``points`` that beat ``ref`` on both objectives (0 for none)."""
    points = list(points)
    if not points:
        return 0.0
    return sum(1 for a, b in points if a > ref[0] and b > ref[1]) / len(points)
