"""Shared test helpers: build kernels by hand and run random rollouts."""

from __future__ import annotations

import random

import numpy as np

from kasrl.ir.graph import KernelGraph
from kasrl.ir.primitives import PRIMITIVES
from kasrl.solver.budget import Budget, Placement
from kasrl.solver.solve import SizeSolver


def build(steps, solve_at=None, budget=None, ctx=None) -> KernelGraph:
    """Build a kernel from ``[(name, operands, attrs), ...]`` or ``("fork", i)`` steps.

    ``solve_at``: placements to solve the sizes at (default: leave unsolved).
    """
    g = KernelGraph(ctx) if ctx else KernelGraph()
    for step in steps:
        if step[0] == "fork":
            g.fork(step[1])
            continue
        name, ops, attrs = step
        g.apply(PRIMITIVES[name](**attrs), ops)
    if solve_at is not None:
        SizeSolver(solve_at, budget or Budget(flops=10.0, params=10.0, max_tensor=64.0)).solve(g)
    return g


def rollout(space, rng: random.Random, lo: int = 5, hi: int = 25) -> KernelGraph:
    """A random finished kernel: uniform over legal actions, finishing after a drawn count."""
    g = space.reset()
    target = rng.randint(lo, hi)
    while not isinstance(g, KernelGraph):  # a search state until the finish action returns the kernel
        mask = space.action_mask(g)
        legal = np.flatnonzero(mask)
        assert len(legal) > 0, "empty mask"
        if g.steps >= target and mask[0]:
            a = 0
        else:
            others = [int(a) for a in legal if a != 0]
            a = rng.choice(others) if others else 0
        g = space.apply(g, a)
    return g


P = Placement
