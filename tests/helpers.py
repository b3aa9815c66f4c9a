"""Shared test helpers: build kernels by hand and run random rollouts."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


class PlantedLatency:
    """A latency model with planted integer coefficients (the interface of :mod:`kasrl.latency`'s model).

    Every node costs ``fixed`` plus ``per_flop`` per FLOP plus ``per_byte`` per
    byte moved (inputs, output and weights, 4 bytes each, at ``batch``); the
    kernel module costs ``overhead`` per call. Units are arbitrary integers.
    """

    def __init__(self, fixed: int = 2000, per_flop: int = 1, per_byte: int = 3, overhead: int = 5000, batch: int = 1) -> None:
        self.fixed, self.per_flop, self.per_byte, self.overhead, self.batch = fixed, per_flop, per_byte, overhead, batch

    def node_terms(self, prim, shapes, inf) -> tuple:
        from kasrl.ir.dims import Monomial
        from kasrl.ir.shape import volume

        terms = [Monomial.const(self.fixed)]
        terms += [m * (self.per_flop * self.batch) for m in inf.flops]
        terms += [volume(s) * (4 * self.per_byte * self.batch) for s in (*shapes, inf.shape)]
        terms += [m * (4 * self.per_byte) for m in inf.params]
        return tuple(terms)

    def kernel_terms(self) -> tuple:
        from kasrl.ir.dims import Monomial

        return (Monomial.const(self.overhead),)

    def conv3x3_units(self, p) -> int:
        flops = 2 * 9 * p.c * p.c * p.h * p.w
        moved = 4 * (2 * p.c * p.h * p.w * self.batch + 9 * p.c * p.c)
        return self.fixed + self.per_flop * flops * self.batch + self.per_byte * moved


TEST_MODEL = Path(__file__).parent / "data" / "latency_model.json"


def fitted_latency_model(fingerprint: dict, batch: int | None = None):
    """A :class:`~kasrl.latency.LatencyModel` with real fitted coefficients (tests/data/latency_model.json),
    keyed to ``fingerprint`` (so it loads on whatever machine the tests run on)."""
    from kasrl.latency import LatencyModel

    doc = json.loads(TEST_MODEL.read_text())
    return LatencyModel(doc["coefficients"], batch or fingerprint["batch"], fingerprint["dtype"], fingerprint, doc["unit_exp"],
                        doc["scales"])


def write_fitted_profile(path, fingerprint: dict, placements=("32x14x14", "64x7x7")) -> Path:
    """Write :func:`fitted_latency_model` as a profile at ``path`` (a test's stand-in for ``python -m kasrl calibrate``)."""
    from kasrl.latency import save_profile

    calibration = {"placements": list(map(str, placements)), "seed": 0, "seconds": 0.0,
                   "samples": {"source": str(TEST_MODEL.name)}, "residuals": {}, "allocator_pinned": False, "settings": {}}
    return save_profile(fitted_latency_model(fingerprint), calibration, path)
