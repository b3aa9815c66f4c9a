"""The completability oracle agrees with brute force on small cases.

The brute-force reference is written from the oracle's specification, not from
its code: every monomial is evaluated with plain Fractions
(:func:`kasrl.ir.sizes.symbol_values`), route *c* costs the 1 -> C projection's
``2C`` FLOPs and ``C`` parameters, and with a latency budget the finishing
step's reserve is built here from explicit fold, add and projection nodes priced
by a planted latency model.
"""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import numpy as np
import pytest

from kasrl.ir.dims import ONE, C
from kasrl.ir.graph import poly_terms
from kasrl.ir.primitives import Binary, Fold, Projection
from kasrl.ir.shape import C_SLOT, G_SLOT, H_SLOT, INPUT_SHAPE, KH_SLOT, KW_SLOT, SLOTS, W_SLOT
from kasrl.ir.sizes import SizeChoice, symbol_values
from kasrl.solver.budget import Budget, Placement, SizeDomain
from kasrl.solver.cpsat import SolverConfig, solve_sizes
from kasrl.space import SearchSpace, SpaceConfig
from tests.helpers import PlantedLatency

PLACEMENTS = [Placement(8, 4, 4), Placement(16, 2, 2)]
DOMAIN = SizeDomain(ratio_exps=(-2, 0), const_exps=(0, 2))  # 6 choices: brute force stays small
LATENCY = PlantedLatency(fixed=300, per_flop=1, per_byte=1, overhead=500)


def _space(families, budget=0.6, width=3, steps=8, latency=None):
    config = SpaceConfig(kernel_sizes=(3,), dilations=(1,), shifts=(1,), families=families, max_width=width, max_steps=steps)
    b = Budget(flops=budget, params=budget, max_tensor=12.0, latency=latency)
    return SearchSpace(PLACEMENTS, b, config, SolverConfig(domain=DOMAIN), latency=LATENCY if latency else None)


def _value(terms, values) -> Fraction:
    return sum((m.evaluate(values) for m in terms), Fraction(0))


def _node_latency(prim, shapes) -> tuple:
    inf = prim.infer(shapes, 0)
    return LATENCY.node_terms(prim, shapes, inf), inf.shape


def _reserve(shapes, has_c: bool) -> tuple:
    """The finishing step's latency, as specified: each branch's folds (G, KH, KW,
    then C unless it is C on route a or 1), one add per extra branch at
    [1, C, 1, 1, H, W], and on route c a pooled copy's folds, projection and add."""
    terms = []
    for s in shapes:
        for slot in (G_SLOT, KH_SLOT, KW_SLOT, C_SLOT):
            if s[slot].is_one or (slot == C_SLOT and has_c and s[slot] == C):
                continue
            t, s = _node_latency(Fold(slot=SLOTS[slot], mode="mean"), (s,))
            terms += t
    add, _ = _node_latency(Binary(op="add"), (INPUT_SHAPE, INPUT_SHAPE))
    terms += list(add) * (len(shapes) - 1)
    if not has_c:
        pooled = (ONE, ONE, ONE, ONE, INPUT_SHAPE[H_SLOT], INPUT_SHAPE[W_SLOT])
        t, s = _node_latency(Fold(slot="H", mode="mean"), (pooled,))
        terms += t
        t, s = _node_latency(Fold(slot="W", mode="mean"), (s,))
        terms += t
        t, s = _node_latency(Projection(out="C", grouped=False), (s,))
        terms += t
        terms += _node_latency(Binary(op="add"), (pooled, s))[0]
    return tuple(terms)


def _brute_sizes(space, g) -> bool:
    """Some assignment of ``g``'s free sizes meets every constraint and the budget,
    with the finishing route's cost added (enumerated, plain Fractions)."""
    shapes = [g.branch_shape(i) for i in range(g.width)]
    if not any(not s[H_SLOT].is_one for s in shapes) or not any(not s[W_SLOT].is_one for s in shapes):
        return False
    has_c = any(s[C_SLOT] == C for s in shapes)
    cons = g.constraints
    flops = poly_terms(cons.flops) + (() if has_c else (C * 2,))
    params = poly_terms(cons.params) + (() if has_c else (C,))
    latency = poly_terms(cons.latency) + (_reserve(shapes, has_c) if space.solver.latency is not None else ())
    for combo in itertools.product(DOMAIN.choices(), repeat=len(g.free_symbols)):
        sizes = {s: SizeChoice(*c) for s, c in zip(g.free_symbols, combo, strict=False)}
        ok = True
        for p, lim in zip(space.solver.placements, space.solver.limits, strict=False):
            v = symbol_values(sizes, p.c, p.h, p.w)
            if not (all((m.evaluate(v).denominator == 1 and m.evaluate(v) >= 1) for m in cons.integral)
                    and all(m.evaluate(v) == 1 for m in cons.equal)
                    and all(m.evaluate(v) <= lim.volume for m in cons.volume)
                    and _value(flops, v) <= lim.flops and _value(params, v) <= lim.params
                    and (lim.latency is None or _value(latency, v) <= lim.latency)):
                ok = False
                break
        if ok:
            return True
    return False


FAMILIES = ("projection", "conv", "mix", "unfold", "group", "fold", "activation", "binary", "bmm", "fork")


@pytest.mark.parametrize("budget,latency", [(0.25, None), (0.6, None), (1.0, None), (1.0, 0.5), (1.0, 1.0), (0.6, 2.0)])
def test_every_action_verdict_matches_enumeration_of_sizes(budget, latency):
    """For every structurally applicable action in random states (forks too, when
    latency is budgeted), the mask says "legal" exactly when some sizes satisfy the
    successor's constraints plus the finishing route's cost. Actions the redundancy
    rules reject are masked whatever the budget."""
    space = _space(FAMILIES, budget, latency=latency)
    rng = random.Random(int(budget * 100) + int((latency or 0) * 7))
    checked = agree_legal = 0
    for _ in range(25):
        g = space.reset()
        for _ in range(rng.randint(0, 6)):
            mask = space.action_mask(g)
            for a in range(1, space.n_actions):
                act = space.table[a]
                if any(i >= g.width for i in act.operands):
                    continue
                succ = g.graph.copy()
                if act.kind == "fork":
                    if latency is None or g.width >= space.config.max_width:
                        continue
                    succ.fork(act.operands[0])
                else:
                    if act.kind == "binary" and act.prim.commutative and act.operands[0] > act.operands[1]:
                        continue
                    if g.graph.infer(act.prim, act.operands) is None:
                        continue
                    if space._is_redundant(g.graph, act):
                        assert not mask[a], f"{act.label()} is redundant after\n{g.describe()}"
                        continue
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

    def recording(state, pr, domains, extra, pending=()):
        out = bound_fails(state, pr, domains, extra, pending)
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
        extra = ((), ()) if has_c else ((C * 2,), (C,))
        prob = space.solver.problem(cons, sorted(set(symbols) | set(pr.old_syms) | set(pr.new_syms)), *extra)
        assert solve_sizes(prob, space.solver.config, "feasible", tie_break=False)[0] is None
