"""The completability oracle agrees with brute force on small cases."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from kasrl.ir.dims import C
from kasrl.ir.graph import poly_terms
from kasrl.ir.primitives import Binary, Fold, Projection
from kasrl.ir.shape import C_SLOT, H_SLOT, W_SLOT
from kasrl.solver.budget import Budget, Placement, SizeDomain
from kasrl.solver.cpsat import SolverConfig, solve_sizes
from kasrl.solver.numeric import NumericModel
from kasrl.solver.oracle import ROUTE_C_FLOPS, ROUTE_C_PARAMS
from kasrl.space import SearchSpace, SpaceConfig

PLACEMENTS = [Placement(8, 4, 4), Placement(16, 2, 2)]
DOMAIN = SizeDomain(ratio_exps=(-2, 0), const_exps=(0, 2))  # 6 choices: brute force stays small


def _space(families, budget=0.6, width=3, steps=8):
    config = SpaceConfig(kernel_sizes=(3,), dilations=(1,), shifts=(1,), families=families, max_width=width, max_steps=steps)
    return SearchSpace(PLACEMENTS, Budget(flops=budget, params=budget, max_tensor=12.0), config, SolverConfig(domain=DOMAIN))


def _brute_sizes(space, g) -> bool:
    """Enumerate every size assignment of ``g`` plus its finishing route's cost."""
    shapes = [g.branch_shape(i) for i in range(g.width)]
    if not any(not s[H_SLOT].is_one for s in shapes) or not any(not s[W_SLOT].is_one for s in shapes):
        return False
    has_c = any(s[C_SLOT] == C for s in shapes)
    num = NumericModel(space.solver.placements, space.solver.limits)
    cons = g.constraints
    flops = poly_terms(cons.flops) + (() if has_c else ROUTE_C_FLOPS)
    params = poly_terms(cons.params) + (() if has_c else ROUTE_C_PARAMS)
    for combo in itertools.product(DOMAIN.choices(), repeat=len(g.free_symbols)):
        w = dict(zip(g.free_symbols, combo))
        if not all(num.integral(m, w) for m in cons.integral):
            continue
        if not all(num.equal_one(m, w) for m in cons.equal):
            continue
        if not all(num.volume_ok(m, w) for m in cons.volume):
            continue
        f, p = num.poly(flops, w), num.poly(params, w)
        if all(a <= lim.flops and b <= lim.params for a, b, lim in zip(f, p, space.solver.limits)):
            return True
    return False


FAMILIES = ("projection", "conv", "mix", "unfold", "group", "fold", "activation", "binary", "bmm", "fork")


@pytest.mark.parametrize("budget", [0.25, 0.6, 1.0])
def test_every_action_verdict_matches_enumeration_of_sizes(budget):
    """For every structurally applicable action in random states, the mask says
    "legal" exactly when some sizes satisfy the successor's constraints plus the
    finishing route's cost."""
    space = _space(FAMILIES, budget)
    rng = random.Random(int(budget * 100))
    checked = agree_legal = 0
    for _ in range(25):
        g = space.reset()
        for _ in range(rng.randint(0, 6)):
            mask = space.action_mask(g)
            for a in range(1, space.n_actions):
                act = space.table[a]
                if act.kind not in ("unary", "binary") or any(i >= g.width for i in act.operands):
                    continue
                if act.kind == "binary" and act.prim.commutative and act.operands[0] > act.operands[1]:
                    continue
                if g.graph.infer(act.prim, act.operands) is None:
                    continue
                succ = g.graph.copy()
                succ.apply(act.prim, act.operands)
                expected = _brute_sizes(space, succ)
                assert bool(mask[a]) == expected, f"{act.label()} after\n{g.describe()}"
                checked += 1
                agree_legal += expected
            legal = [a for a in np.flatnonzero(mask) if a != 0]
            if not legal:
                break
            g = space.apply(g, int(rng.choice(legal)))
    assert checked > 300 and 0 < agree_legal < checked  # both verdicts were exercised


def _finishable_by_search(space, g, depth: int, memo: dict) -> bool:
    """Depth-limited search over explicit primitives for a finished kernel whose sizes solve."""
    key = (tuple(g.branch_shape(i) for i in range(g.width)), g.constraints.key(), depth)
    if key in memo:
        return memo[key]
    feasible = memo.setdefault("sat", {})
    ckey = g.constraints.key()
    if ckey not in feasible:
        prob = space.solver.problem(g.constraints, g.free_symbols)
        feasible[ckey] = solve_sizes(prob, space.solver.config, "feasible", tie_break=False)[0] is not None
    if not feasible[ckey]:  # constraints only grow: nothing below can be solved either
        memo[key] = False
        return False
    if g.is_finished:
        memo[key] = True
        return True
    result = False
    if depth > 0:
        moves = []
        for i in range(g.width):
            for slot in ("G", "C", "KH", "KW", "H", "W"):
                moves.append((Fold(slot=slot, mode="mean"), (i,)))
            moves.append((Projection(out="C", grouped=False), (i,)))
        for i in range(g.width):
            for j in range(i + 1, g.width):
                moves.append((Binary(op="add"), (i, j)))
        for prim, ops in moves:
            if g.infer(prim, ops) is None:
                continue
            nxt = g.copy()
            nxt.apply(prim, ops)
            if _finishable_by_search(space, nxt, depth - 1, memo):
                result = True
                break
        if not result and g.width < 3:
            for i in range(g.width):
                nxt = g.copy()
                nxt.fork(i)
                if _finishable_by_search(space, nxt, depth - 1, memo):
                    result = True
                    break
    memo[key] = result
    return result


@pytest.mark.slow
def test_completable_matches_a_search_over_explicit_finishing_steps():
    """Small states: the oracle's verdict equals an exhaustive search over
    folds, adds, projections to C and forks (depth 6)."""
    families = ("projection", "conv", "fold", "activation", "binary", "fork")
    space = _space(families, budget=0.3, width=2, steps=6)
    rng = random.Random(5)
    verdicts = []
    memo: dict = {}
    for _ in range(40):
        g = space.reset().graph
        for _ in range(rng.randint(1, 4)):
            acts = [a for a in range(1, space.n_actions) if space.table[a].kind in ("unary", "binary", "fork")
                    and all(i < g.width for i in space.table[a].operands)]
            a = rng.choice(acts)
            act = space.table[a]
            nxt = g.copy()
            if act.kind == "fork":
                if g.width >= 2:
                    continue
                nxt.fork(act.operands[0])
            else:
                if g.infer(act.prim, act.operands) is None:
                    continue
                nxt.apply(act.prim, act.operands)
            g = nxt
        if g.width > 1:
            continue
        oracle = space.oracle.completable(space.state(g))
        search = _finishable_by_search(space, g, 6, memo)
        assert oracle == search, g.describe()
        verdicts.append(oracle)
    assert True in verdicts and False in verdicts


def test_rejections_by_bounds_and_inherited_rejections_are_exact_at_resnet18():
    """At ResNet-18's placements: every effect the bounds reject (the cheap
    state-plus-action floor and the full bound, coupled floors included) has no
    sizes by CP-SAT, and the masks along an episode (which carry rejections
    down) equal masks computed from scratch for the same state."""
    from kasrl.solver.budget import RESNET18_PLACEMENTS

    space = SearchSpace(RESNET18_PLACEMENTS)
    oracle = space.oracle
    rejected = []
    bound_fails = oracle._bound_fails

    def recording(state, pr, domains, extra):
        out = bound_fails(state, pr, domains, extra)
        if out:
            rejected.append((state.graph.constraints.copy(), state.graph.free_symbols, pr, extra is oracle._no_extra))
        return out

    oracle._bound_fails = recording
    rng = random.Random(7)
    compared, cheap = 0, []
    for _ in range(6):
        g = space.reset()
        while g.steps < space.config.max_steps:
            mask = space.action_mask(g)
            if g.steps % 4 == 3:
                fresh = g.copy()  # no inherited rejections, no caches
                oracle.set_witness(fresh, g.witness, g.witness_costs)
                assert np.array_equal(space.action_mask(fresh), mask)
                compared += 1
            shapes = [g.branch_shape(i) for i in range(g.width)]
            for i in range(g.width):  # the cheap floor test, on the running bound this state carries
                for pr, *_ in space._groups_at((shapes[i],), i)[1]:
                    for has_c in (False, True):
                        if oracle.cannot_fit(pr, oracle.headroom(g, has_c)):
                            cheap.append((g.graph.constraints.copy(), g.graph.free_symbols, pr, has_c))
            legal = [int(a) for a in np.flatnonzero(mask) if a != 0]
            g = space.apply(g, rng.choice(legal))
    oracle._bound_fails = bound_fails
    assert compared >= 30 and len(cheap) >= 20 and rejected  # the cheap floor decides most rejections
    for cons, symbols, pr, has_c in rng.sample(cheap, 20) + rng.sample(rejected, min(20, len(rejected))):
        cons.add(pr.inf)
        extra = ((), ()) if has_c else (ROUTE_C_FLOPS, ROUTE_C_PARAMS)
        prob = space.solver.problem(cons, sorted(set(symbols) | set(pr.old_syms) | set(pr.new_syms)), *extra)
        assert solve_sizes(prob, space.solver.config, "feasible", tie_break=False)[0] is None
