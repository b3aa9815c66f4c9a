"""Benchmark: CP-SAT solve time by kernel size, and the oracle's query time.

    python bench/solver.py [--kernels 40] [--seed 0]

Single-threaded, ResNet-18's four placements, default budget (one 3x3 conv).
* solve: the finish-time solve (closing + maximise FLOPs use) of kernels with
  5, 10 and 20 primitives — median and 90th percentile;
* oracle: "can this state still be finished?" for a state with no witness,
  answered by a fresh oracle (cold: CP-SAT) and again (warm: the cache);
  and the per-action check used by masks, cold (first time this effect is seen)
  and warm (seen before).
"""

from __future__ import annotations

import argparse
import random
import time

from common import device_line, med, pct, setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fp = setup()
    import numpy as np

    from kasrl.solver.oracle import CompletionOracle
    from kasrl.space import SearchSpace

    print(device_line(fp))
    print(f"{'primitives':>10} {'solve ms (median / p90)':>26} {'free sizes':>10} {'state cold/warm us':>20} {'action cold/warm us':>21}")
    for n in (5, 10, 20):
        space = SearchSpace()
        rng = random.Random(args.seed + n)
        solve_ms, n_free, cold_s, warm_s, cold_a, warm_a = [], [], [], [], [], []
        for _ in range(args.kernels):
            g = space.reset()
            while g.steps < n:
                legal = [int(a) for a in np.flatnonzero(space.action_mask(g)) if a != 0]
                g = space.apply(g, rng.choice(legal))
            t = time.perf_counter()
            k = space.finish(g)
            solve_ms.append((time.perf_counter() - t) * 1000)
            n_free.append(len(k.free_symbols))
            # state-level query on a copy without witness
            oracle = CompletionOracle(space.solver)
            for bucket in (cold_s, warm_s):
                c = g.copy()
                t = time.perf_counter()
                oracle.completable(c)
                bucket.append((time.perf_counter() - t) * 1e6)
            # action-level: one structurally applicable action, asked twice
            acts = [a for a in range(space.n_actions) if space.table[a].kind == "unary" and space.table[a].operands[0] < g.width
                    and g.graph.infer(space.table[a].prim, space.table[a].operands) is not None]
            act = space.table[rng.choice(acts)]
            inf = g.graph.infer(act.prim, act.operands)
            fresh = CompletionOracle(space.solver)
            base = g.copy()
            fresh.set_witness(base, g.witness, g.witness_costs)
            for bucket in (cold_a, warm_a):
                t = time.perf_counter()
                fresh.check(base, inf, act.operands)
                bucket.append((time.perf_counter() - t) * 1e6)
        print(f"{n:>10} {med(solve_ms):>12.1f} / {pct(solve_ms, 90):<11.1f} {med(n_free):>10.0f} "
              f"{med(cold_s):>9.0f} / {med(warm_s):<8.0f} {med(cold_a):>10.0f} / {med(warm_a):<8.0f}")


if __name__ == "__main__":
    main()
