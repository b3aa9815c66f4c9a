"""Benchmark: microseconds to enumerate the legal actions of a state and to apply one.

    python bench/ir.py [--states 60] [--seed 0]

Single-threaded. States are drawn by random rollouts to 5, 10 and 20 primitives at
ResNet-18's four placements. "Enumerate" is computing the exact action mask of a
state (every action's legality, completability included); "apply" is taking one
legal action. Cold: a fresh search space (empty caches); warm: after the
same space has served a few hundred states (the steady state of a search).
"""

from __future__ import annotations

import argparse
import random
import time

from common import device_line, med, pct, setup


def states_at(space, n: int, count: int, rng: random.Random) -> list:
    import numpy as np

    out = []
    while len(out) < count:
        g = space.reset()
        while g.steps < n:
            mask = space.action_mask(g)
            legal = [int(a) for a in np.flatnonzero(mask) if a != 0]
            g = space.apply(g, rng.choice(legal))
        out.append(g)
    return out


def fresh_copy(space, g):
    c = g.copy()
    space.oracle.set_witness(c, g.witness, g.witness_costs, g.domains)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--states", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fp = setup()
    from kasrl.space import SearchSpace

    print(device_line(fp))
    print(f"{'primitives':>10} {'cache':>5} {'enumerate us (median / p90)':>30} {'apply us (median / p90)':>26} {'legal actions':>14}")
    for n in (5, 10, 20):
        for cache in ("cold", "warm"):
            space = SearchSpace()
            rng = random.Random(args.seed + n)
            states = states_at(space, n, args.states, rng)  # this also warms the caches
            if cache == "cold":
                space = SearchSpace()
            enum_us, apply_us, legal = [], [], []
            for g in states:
                c = fresh_copy(space, g)
                t = time.perf_counter()
                mask = space.action_mask(c)
                enum_us.append((time.perf_counter() - t) * 1e6)
                choices = [int(a) for a in mask.nonzero()[0] if a != 0]
                legal.append(len(choices) + int(mask[0]))
                a = rng.choice(choices)
                t = time.perf_counter()
                space.apply(c, a)
                apply_us.append((time.perf_counter() - t) * 1e6)
            print(f"{n:>10} {cache:>5} {med(enum_us):>14.0f} / {pct(enum_us, 90):<13.0f} {med(apply_us):>12.0f} / {pct(apply_us, 90):<11.0f} {med(legal):>14.0f}")


if __name__ == "__main__":
    main()
