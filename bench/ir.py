"""Benchmark: microseconds to compute the exact action mask of a state and to apply one action.

    python bench/ir.py [--episodes 40] [--warm 300] [--processes 4] [--seed 0] [--latency]

Single-threaded, allocator pinned, ResNet-18's four placements. Every figure times
a state the search space has never decided before (no verdict replayed from a
memo for the same state), bucketed by the state's actions taken (around 5, 10 and
20):

* **cold**: in a fresh Python process (no module-level caches: effect ids,
  compiled monomials, CP-SAT value tables), the masks of the states along the
  first ``--episodes`` random episodes, as the search meets them;
* **steady state**: in one process, after ``--warm`` random episodes, the masks of
  the states along ``--episodes`` new episodes (other seeds), as a long search
  meets new states.

"Apply" is taking one legal action from such a state. With ``--latency`` the space
has a latency budget (a planted per-op model: every action is then checked, forks
included).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from common import device_line, med, pct, setup

BUCKETS = ((4, 6, "~5"), (9, 11, "~10"), (18, 22, "~20"))


def _space(latency: bool):
    from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget
    from kasrl.space import SearchSpace

    if not latency:
        return SearchSpace(RESNET18_PLACEMENTS)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import PlantedLatency

    return SearchSpace(RESNET18_PLACEMENTS, Budget(latency=1.0), latency=PlantedLatency(fixed=20_000, per_byte=2))


def _episodes(space, n: int, seed: int, timed: bool) -> list:
    """Random episodes; when ``timed``, ``(steps, mask us, apply us)`` of each new state."""
    import numpy as np

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s = space.reset()
        target = rng.randint(5, 22)
        while s.steps < target:
            t = time.perf_counter()
            mask = space.action_mask(s)
            mask_us = (time.perf_counter() - t) * 1e6
            legal = [int(a) for a in np.flatnonzero(mask) if a != 0]
            if not legal:
                break
            a = rng.choice(legal)
            t = time.perf_counter()
            s = space.apply(s, a)
            apply_us = (time.perf_counter() - t) * 1e6
            if timed:
                rows.append((s.steps - 1, mask_us, apply_us))
    return rows


def _child(args) -> None:
    """One fresh process: the cold masks of its first episodes, as JSON on stdout."""
    setup()
    print(json.dumps(_episodes(_space(args.latency), args.episodes, args.seed, timed=True)))


def _report(label: str, rows: list) -> None:
    for lo, hi, name in BUCKETS:
        sel = [r for r in rows if lo <= r[0] <= hi]
        if not sel:
            continue
        m = [r[1] for r in sel]
        a = [r[2] for r in sel]
        print(f"{label:>14} {name:>4} actions: mask {med(m):>8.0f} us (p90 {pct(m, 90):>7.0f}), apply {med(a):>6.0f} us "
              f"(p90 {pct(a, 90):>6.0f}); {len(sel)} states")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    fp = setup()
    print(device_line(fp))
    cold: list = []
    for k in range(args.processes):
        cmd = [sys.executable, __file__, "--child", "--episodes", str(args.episodes), "--seed", str(args.seed + 1000 * k)]
        if args.latency:
            cmd.append("--latency")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        cold += json.loads(out.stdout.strip().splitlines()[-1])
    _report(f"cold ({args.processes} fresh processes)", cold)
    space = _space(args.latency)
    t = time.perf_counter()
    _episodes(space, args.warm, args.seed + 1, timed=False)
    warm_s = time.perf_counter() - t
    steady = _episodes(space, args.episodes, args.seed + 2, timed=True)
    _report(f"steady (after {args.warm} episodes, {warm_s:.0f} s)", steady)


if __name__ == "__main__":
    main()
