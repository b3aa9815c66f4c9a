"""Finish-time size solving with CP-SAT."""

from __future__ import annotations

import random
import re

import pytest
import torch

from kasrl.analysis import analytic_cost, analytic_costs, measured_cost
from kasrl.codegen.module import build_module
from kasrl.errors import SolverInfeasible
from kasrl.ir.dims import free_symbol
from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, Placement, SizeDomain, conv3x3_flops, conv3x3_params
from kasrl.solver.cpsat import SolverConfig
from kasrl.solver.solve import SizeSolver
from kasrl.space import SearchSpace
from tests.helpers import build, rollout

X0 = free_symbol(0)
BOTTLENECK = [
    ("projection", (0,), dict(out="new", grouped=False)),
    ("conv", (0,), dict(kh=3, kw=3, dilation=1, out="depthwise")),
    ("projection", (0,), dict(out="C", grouped=False)),
]


def test_bottleneck_gets_the_largest_width_that_fits_half_a_conv():
    g = build(BOTTLENECK)
    sizes = SizeSolver(RESNET18_PLACEMENTS, Budget(flops=0.5)).solve(g)
    # FLOPs per pixel: 2*C*x (in) + 18*x (depthwise) + 2*x*C (out) <= 0.5 * 18 * C^2
    # -> x <= 9 C^2 / (4 C + 18): 134.5 at C=64 ... so x = 2C fits everywhere, 4C nowhere
    assert sizes[X0].ratio and sizes[X0].exp == 1
    for p in RESNET18_PLACEMENTS:
        x = sizes[X0].value(p.c)
        assert 4 * p.c * x + 18 * x <= 9 * p.c * p.c < 4 * p.c * (2 * x) + 18 * (2 * x)


def test_grouped_projection_gets_a_group_count_that_divides_c_everywhere():
    steps = [("group", (0,), {}), ("projection", (0,), dict(out="C", grouped=True)),
             ("conv", (0,), dict(kh=3, kw=3, dilation=1, out="depthwise"))]
    placements = [Placement(48, 8, 8), Placement(80, 4, 4), Placement(112, 2, 2)]  # gcd 16, not powers of two
    g = build(steps)
    sizes = SizeSolver(placements, Budget(flops=0.2, params=0.2)).solve(g)
    for p in placements:
        groups = sizes[X0].value(p.c)
        assert p.c % groups == 0
        flops, params = analytic_cost(g, p)
        assert flops <= 0.2 * conv3x3_flops(p) and params <= 0.2 * conv3x3_params(p)


def test_same_seed_same_solution_and_the_seed_breaks_ties():
    steps = [("group", (0,), {}), ("fold", (0,), dict(slot="G", mode="mean")), ("fold", (0,), dict(slot="C", mode="max")),
             ("projection", (0,), dict(out="C", grouped=False))]
    solutions = set()
    for seed in range(6):
        a = SizeSolver(RESNET18_PLACEMENTS, config=SolverConfig(seed=seed)).solve(build(steps))
        b = SizeSolver(RESNET18_PLACEMENTS, config=SolverConfig(seed=seed)).solve(build(steps))
        assert a == b
        solutions.add(tuple(sorted(a.items())))
    assert len(solutions) > 1  # the group count is free (it costs nothing): seeds pick different ones


def test_impossible_budget_names_placement_and_constraint():
    g = build([("conv", (0,), dict(kh=3, kw=1, dilation=1, out="C"))] + BOTTLENECK)  # at least 6 C^2 H W FLOPs
    with pytest.raises(SolverInfeasible) as err:
        SizeSolver(RESNET18_PLACEMENTS, Budget(flops=0.1)).solve(g)
    assert err.value.constraint == "flops" and err.value.placement == (64, 56, 56)
    assert re.match(r"budget 0\.1x conv FLOPs is below the minimum this kernel needs \(\d\.\d+x conv FLOPs\) at 64x56x56", str(err.value))


def test_params_budget_is_reported_as_such():
    g = build([("conv", (0,), dict(kh=5, kw=5, dilation=1, out="C"))])
    with pytest.raises(SolverInfeasible, match="budget 1x conv params is below the minimum .* at 64x56x56") as err:
        SizeSolver(RESNET18_PLACEMENTS, Budget(flops=10.0)).solve(g)
    assert err.value.constraint == "params"


def test_contradictory_placements_are_named():
    # params C*C/g <= 64 with g = C/2^k (k >= 1) or a power-of-two constant dividing C:
    # alone, 64 channels need g = 64 (a constant) and 24 channels need g = C/2 = 12;
    # no single choice works at both.
    steps = [("group", (0,), {}), ("projection", (0,), dict(out="C", grouped=True))]
    placements = [Placement(64, 4, 4), Placement(24, 4, 4)]
    config = SolverConfig(domain=SizeDomain(ratio_exps=(-6, -1)))
    solver = SizeSolver(placements, Budget(flops=100.0, params_abs=64), config)
    for p in placements:
        assert SizeSolver([p], solver.budget, config).solve(build(steps))
    message = "contradictory placements: no single choice of sizes works at both 64x4x4 and 24x4x4"
    with pytest.raises(SolverInfeasible, match=message) as err:
        solver.solve(build(steps))
    assert err.value.constraint == "placements" and err.value.placement is None


def test_tensor_cap_smaller_than_the_input_is_rejected():
    with pytest.raises(SolverInfeasible, match="below the input itself at 64x56x56"):
        SizeSolver(RESNET18_PLACEMENTS, Budget(max_tensor_abs=1000))


@pytest.mark.slow
def test_every_solved_random_kernel_builds_runs_and_matches_its_flops():
    space = SearchSpace(budget=Budget())
    rng = random.Random(2024)
    small = [Placement(p.c // 8, p.h // 7, p.w // 7) for p in RESNET18_PLACEMENTS]  # same ratios, cheap to run
    for _ in range(30):
        g = rollout(space, rng, 3, 18)
        for p, lim in zip(RESNET18_PLACEMENTS, space.solver.limits, strict=False):
            flops, params = analytic_cost(g, p)
            assert flops <= lim.flops and params <= lim.params
        assert analytic_costs(g, RESNET18_PLACEMENTS) == [analytic_cost(g, p) for p in RESNET18_PLACEMENTS]
        for p in small + [RESNET18_PLACEMENTS[-1]]:
            try:
                m = build_module(g, *p)
            except ValueError:
                continue  # a size that is only an integer at the real placements
            x = torch.randn(2, p.c, p.h, p.w, requires_grad=True)
            y = m(x)
            assert y.shape == x.shape
            y.float().sum().backward()
            assert measured_cost(m, p) == analytic_cost(g, p)
