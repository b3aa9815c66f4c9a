"""The completability oracle: can this partial kernel still be finished legally?

**What "finished" means.** The finishing step (see
:meth:`kasrl.space.SearchSpace.finish`) closes a partial kernel with zero-cost
primitives where it can: it folds away G, KH and KW on every branch, folds C
on branches whose channel size is not C, and adds the branches together. That
costs nothing when some branch already has channel size exactly ``C`` (route
*a*). Otherwise a contraction to ``C`` is unavoidable, and the cheapest one
costs ``2*C`` FLOPs and ``C`` parameters (a 1 -> C projection of a pooled copy;
route *c*). Both routes need a branch that still has H and one that still has
W: no primitive creates a spatial axis.

**Why that is exact.** Every primitive only adds constraints and non-negative
costs, and a channel size of exactly ``C`` is only ever produced by the input,
by a contraction with ``out=C`` or by merging with such a branch. So a state
can be finished iff H and W survive somewhere and the constraints of the state,
plus the route's extra cost, have a solution. The oracle decides exactly that.

**How it stays fast.** Each state carries a *witness*: sizes known to satisfy
its constraints. A candidate action is accepted at once when the witness,
extended with the cheapest values for the action's new sizes, still satisfies
every constraint (exact integer arithmetic; floats for costs, re-checked
exactly near a limit). Otherwise one size at a time is re-chosen (those the
action touches first, then any other one that makes room: a local repair). It
is rejected when propagated per-size domains empty out or when lower bounds over
those domains already break a limit (a cost term whose free part must be
integral is at least its static part, which independent ranges miss). Only the
remaining cases go to CP-SAT (minimising cost, which also gives the next
witness), cached by the canonical form of the constraints.

**The mask's decision** (:meth:`CompletionOracle.decide`, for every candidate
effect of a state that :meth:`kasrl.space.SearchSpace.action_mask` lists), cheapest
test first:

1. the route: H and W must survive on some branch, and whether a branch keeps
   channel size ``C`` (route *a*) or not (route *c*, with its extra cost);
2. rejections carried down the episode: constraints only grow, so an effect
   rejected in an earlier state of the episode (with the same or a costlier
   route) stays rejected;
3. the cost floor: the action's own cheapest cost (:meth:`CompletionOracle.effect_floor`,
   cached per effect) must fit above a running lower bound of the state's costs
   (:meth:`CompletionOracle.headroom`);
4. the witness fast path (:meth:`CompletionOracle.quick_fit`);
5. the exact check (:meth:`CompletionOracle.check_prepared`): witness, bounds,
   local repair, CP-SAT.

What the oracle learns about a state (its witness and costs, domains, bounds,
carried rejections) is kept on the :class:`~kasrl.space.state.SearchState`, never
on the graph.
"""

from __future__ import annotations

from collections import Counter
from operator import le
from typing import TYPE_CHECKING, NamedTuple, Sequence

from kasrl.ir.dims import C, free_symbol
from kasrl.ir.graph import Constraints, KernelGraph, poly_terms
from kasrl.ir.primitives import Inference
from kasrl.ir.shape import C_SLOT, H_SLOT, W_SLOT, Shape, volume
from kasrl.solver.cpsat import solve_sizes
from kasrl.solver.numeric import NumericModel
from kasrl.solver.solve import SizeSolver

if TYPE_CHECKING:  # the space imports the oracle, not the other way round
    from kasrl.space.state import SearchState

__all__ = ["CompletionOracle", "Fit", "Prepared", "route", "shape_flags", "ROUTE_C_FLOPS", "ROUTE_C_PARAMS"]

ROUTE_C_FLOPS = (C * 2,)
ROUTE_C_PARAMS = (C,)
_FITS, _NEAR = 2, 1
_FLAGS: dict = {}


def shape_flags(s: Shape) -> tuple:
    """``(has_H, has_W, channel_is_C)`` as ints (cached per shape)."""
    hit = _FLAGS.get(s)
    if hit is None:
        hit = (int(not s[H_SLOT].is_one), int(not s[W_SLOT].is_one), int(s[C_SLOT] == C))
        _FLAGS[s] = hit
    return hit


def route(shapes: Sequence[Shape]) -> tuple:
    """``(spatial_ok, has_exact_c)`` for a set of open-branch shapes."""
    h = w = c = 0
    for s in shapes:
        fh, fw, fc = shape_flags(s)
        h, w, c = h + fh, w + fw, c + fc
    return bool(h and w), bool(c)


def _compare(base: list, delta: list, extra: list, limits: list) -> int:
    """0 when a total is over its limit, ``_FITS`` when all fit, ``_NEAR`` when
    some total is within float rounding of its limit (then check exactly)."""
    out = _FITS
    for b, d, x, lim in zip(base, delta, extra, limits):
        total = b + d + x
        if total > lim * (1 + 1e-9):
            return 0
        if total > lim * (1 - 1e-9):
            out = _NEAR
    return out


class Fit(NamedTuple):
    """A fast-path acceptance, kept lazy: the successor's witness is the state's,
    extended with ``cand`` for the action's new size (None: it has none), and its
    costs are the state's plus ``d_f`` / ``d_p`` per placement."""

    cand: tuple | None
    d_f: list
    d_p: list


class Prepared:
    """An inference with what the oracle needs precomputed (cached per state shape).

    Attributes:
        inf: the inference.
        integral, equal, volume: the monomials it adds that involve free sizes
            (volumes: all).
        trivial: same shape as the single operand and nothing new to satisfy.
        flags: :func:`shape_flags` of the output.
        eid: a small int identifying the effect (for per-state memos).
    """

    __slots__ = ("inf", "integral", "equal", "volume", "trivial", "flags", "eid", "new_syms", "old_syms")
    _ids: dict = {}

    def __init__(self, inf: Inference, operand_shape: Shape | None, new_symbol: int | None = None) -> None:
        self.inf = inf
        self.new_syms = [new_symbol] if inf.new_symbols else []
        self.integral = tuple(m for m in inf.shape if m.free_symbols()) + tuple(m for m in inf.integral if m.free_symbols())
        self.equal = tuple(inf.equal)
        self.volume = (volume(inf.shape),)
        self.trivial = operand_shape is not None and inf.shape == operand_shape and not (
            inf.new_symbols or inf.flops or inf.params or inf.equal or inf.integral
        )
        self.flags = shape_flags(inf.shape)
        key = (inf.shape, inf.new_symbols, inf.flops, inf.params, inf.equal, inf.integral)
        self.eid = Prepared._ids.setdefault(key, len(Prepared._ids))
        syms = set()
        for m in self.integral + self.equal + self.volume + tuple(inf.flops) + tuple(inf.params):
            syms.update(m.free_symbols())
        self.old_syms = tuple(sorted(syms - set(self.new_syms)))


class CompletionOracle:
    """Answers "can this kernel still be finished?" for states and candidate actions.

    Args:
        solver: the size solver (its placements, budget and CP-SAT settings).
    """

    def __init__(self, solver: SizeSolver) -> None:
        self.solver = solver
        self.num = NumericModel(solver.placements, solver.limits)
        self.cache: dict = {}
        self._effects: dict = {}
        self._verdicts: dict = {}
        self.stats: Counter = Counter()
        dom = solver.config.domain
        legal = dom.choices()
        first = [(False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, -1), (True, -2), (True, -3), (True, 1)]
        self._choices = [c for c in first if c in legal] + [c for c in legal if c not in first]
        self._all = tuple(self._choices)
        self._filter_cache: dict = {}
        self._effect_floors: dict = {}
        self._bounds_cache: dict = {}
        n = len(solver.placements)
        self._route_extra = (self.num.poly_float(ROUTE_C_FLOPS, {}), self.num.poly_float(ROUTE_C_PARAMS, {}))
        self._no_extra = ([0.0] * n, [0.0] * n)
        self._value = {c: [float(p.c) ** int(c[0]) * 2.0 ** c[1] for p in solver.placements] for c in legal}
        self._lims_f = [lim.flops for lim in solver.limits]
        self._lims_p = [lim.params for lim in solver.limits]

    # -- witnesses ----------------------------------------------------------------
    def _costs(self, constraints: Constraints, w: dict) -> tuple:
        """Float FLOPs and params per placement under ``w``."""
        return (self.num.poly_float(poly_terms(constraints.flops), w), self.num.poly_float(poly_terms(constraints.params), w))

    def _extra(self, has_c: bool) -> tuple:
        return self._no_extra if has_c else self._route_extra

    def _solve(self, constraints: Constraints, symbols: tuple, has_c: bool) -> dict | None:
        """CP-SAT: cheapest sizes satisfying ``constraints`` plus the route's extra cost."""
        key = (constraints.key(), has_c)
        if key in self.cache:
            self.stats["cache_hit"] += 1
            return self.cache[key]
        self.stats["cpsat"] += 1
        extra = ((), ()) if has_c else (ROUTE_C_FLOPS, ROUTE_C_PARAMS)
        prob = self.solver.problem(constraints, symbols, *extra)
        sizes, _ = solve_sizes(prob, self.solver.config, "min_cost", tie_break=False)
        w = None if sizes is None else {s: (c.ratio, c.exp) for s, c in sizes.items()}
        if len(self.cache) > 100_000:
            self.cache.clear()
        self.cache[key] = w
        return w

    def state_witness(self, state: SearchState) -> dict | None:
        """A witness for ``state`` (cached on it), or None if it cannot be finished."""
        w = state.witness
        if w is not None:
            return w
        graph = state.graph
        spatial_ok, has_c = route([graph.branch_shape(i) for i in range(graph.width)])
        if not spatial_ok:
            return None
        w = self._solve(graph.constraints, graph.free_symbols, has_c)
        if w is not None:
            self.set_witness(state, w)
        return w

    def set_witness(self, state: SearchState, w: dict, costs: tuple | None = None, domains: dict | None = None) -> None:
        """Attach a witness (its costs, and optionally propagated domains) to a state."""
        state.witness = w
        state.witness_costs = costs if costs is not None else self._costs(state.graph.constraints, w)
        if domains is not None:
            state.domains = domains

    def satisfies(self, graph: KernelGraph, w: dict) -> bool:
        """True when ``w`` (symbol -> (ratio, exp)) satisfies every constraint of
        ``graph`` exactly at every placement (no route cost: ``graph`` is finished)."""
        if any(s not in w for s in graph.free_symbols):
            return False
        c = graph.constraints
        num = self.num
        if not (all(num.integral(m, w) for m in c.integral) and all(num.equal_one(m, w) for m in c.equal)
                and all(num.volume_ok(m, w) for m in c.volume)):
            return False
        flops = num.poly(poly_terms(c.flops), w)
        params = num.poly(poly_terms(c.params), w)
        return all(f <= lim.flops and p <= lim.params for f, p, lim in zip(flops, params, self.solver.limits))

    def completable(self, state: SearchState) -> bool:
        """True when ``state`` can still be finished legally within budget."""
        return self.state_witness(state) is not None

    # -- candidate actions ---------------------------------------------------------
    def slack(self, state: SearchState, has_c: bool) -> tuple:
        """``(flops, params)`` per placement that an action may still add to ``state``
        and clearly fit, route cost included (a 1e-9 relative margin below each
        limit, so a float sum that passes is within budget exactly). Cached per state."""
        return self._room(state, ("slack", has_c), lambda: state.witness_costs, 1 - 1e-9)

    def _room(self, state: SearchState, key: tuple, base, factor: float) -> tuple:
        """``(flops, params)`` per placement between ``factor`` x each limit and
        ``base()`` plus the route cost of ``key[1]`` (cached on the state under ``key``)."""
        if state.room is None:
            state.room = {}
        cache = state.room
        hit = cache.get(key)
        if hit is None:
            base_f, base_p = base()
            x_f, x_p = self._extra(key[1])
            hit = (
                [lim * factor - b - x for lim, b, x in zip(self._lims_f, base_f, x_f)],
                [lim * factor - b - x for lim, b, x in zip(self._lims_p, base_p, x_p)],
            )
            cache[key] = hit
        return hit

    def quick_fit(self, pr: Prepared, w: dict, slack: tuple) -> Fit | None:
        """The witness fast path of :meth:`check_prepared`, for the mask's inner loop:
        a :class:`Fit` when the witness, extended with the first size choice that
        keeps the action's own constraints and clearly fits the ``slack``, works;
        None when undecided (then :meth:`check_prepared` decides exactly)."""
        slack_f, slack_p = slack
        wkey = tuple([w[s] for s in pr.old_syms])
        table = self._effects.get((pr.eid, wkey))
        if table is None:
            table = self._effect_table(pr, w, wkey)
        for cand, d_f, d_p in table:
            if all(map(le, d_f, slack_f)) and all(map(le, d_p, slack_p)):  # C-level loops: the hottest code of a search
                return Fit(cand, d_f, d_p)
        return None

    def effect_floor(self, pr: Prepared) -> tuple | None:
        """Lower bounds of the action's own FLOPs and params per placement over
        every size choice its own constraints allow, or None when no choice
        satisfies them or its tensors break the cap whatever the sizes (cached
        per effect: it does not depend on the state)."""
        hit = self._effect_floors.get(pr.eid, False)
        if hit is False:
            domains = {s: self._all for s in pr.old_syms + tuple(pr.new_syms)}
            hit = None
            if (
                self._filter(domains, pr.integral, self.num.integral)
                and self._filter(domains, pr.equal, self.num.equal_one)
                and self._filter(domains, pr.volume, self.num.volume_ok)
            ):
                hit = self._effect_lb(pr, self._bounds(domains), self._floors(pr.integral + pr.equal))
            if len(self._effect_floors) > 200_000:
                self._effect_floors.clear()
            self._effect_floors[pr.eid] = hit
        return hit

    def headroom(self, state: SearchState, has_c: bool) -> tuple:
        """``(flops, params)`` per placement left above the lower bound of the
        state's own costs (with the route's cost): an action whose
        :meth:`effect_floor` exceeds it anywhere cannot be completed (cached per state).

        Along an episode the bound is kept running (:meth:`advance_lb`): the
        previous state's bound plus the action's floor, a valid bound that costs
        nothing to update."""
        return self._room(state, ("headroom", has_c), lambda: state.lb_running or self._state_lb(state), 1 + 1e-9)

    def cannot_fit(self, pr: Prepared, headroom: tuple) -> bool:
        """A cheap, exact rejection: the action's own cheapest costs do not fit in
        the state's :meth:`headroom` (or its own constraints cannot hold).
        Costs add up, so a lower bound of each part bounds the sum.
        """
        floor = self.effect_floor(pr)
        return floor is None or not (all(map(le, floor[0], headroom[0])) and all(map(le, floor[1], headroom[1])))

    def advance_lb(self, state: SearchState, pr: Prepared | None) -> tuple | None:
        """The running lower bound of the state after applying ``pr`` to ``state``
        (``pr`` None: an action that adds no cost); None when none is known."""
        base = state.lb_running or state.lb
        if base is None or pr is None:
            return base
        floor = self.effect_floor(pr)
        if floor is None:
            return None
        return [a + b for a, b in zip(base[0], floor[0])], [a + b for a, b in zip(base[1], floor[1])]

    def successor(self, state: SearchState, pr: Prepared, res: tuple) -> tuple:
        """``(witness, costs, domains)`` of the state after an accepted action
        (``res``: a :class:`Fit` or what :meth:`check_prepared` returned)."""
        if not isinstance(res, Fit):
            return res
        w = state.witness
        base_f, base_p = state.witness_costs
        witness = {**w, pr.new_syms[0]: res.cand} if pr.new_syms else w
        costs = ([a + b for a, b in zip(base_f, res.d_f)], [a + b for a, b in zip(base_p, res.d_p)])
        return witness, costs, None

    # -- the mask's decision ---------------------------------------------------------
    @staticmethod
    def route_for(pr: Prepared, ops: tuple, counts: list, flags: list) -> bool | None:
        """Whether a branch keeps channel size C after the effect ``pr`` on branches
        ``ops`` (``counts``: how many open branches have H, W and channel size C;
        ``flags``: :func:`shape_flags` of each); None when H or W would be gone for good."""
        h, w, c = counts
        for i in ops:
            fh, fw, fc = flags[i]
            h, w, c = h - fh, w - fw, c - fc
        if not (h + pr.flags[0] and w + pr.flags[1]):
            return None
        return bool(c + pr.flags[2])

    def decide(self, state: SearchState, shapes: list, candidates: list, succ: dict) -> list:
        """The mask's decision: the action indices of the candidate effects that
        leave ``state`` completable; fills ``succ`` with ``successor key ->
        (Prepared, result)`` for :meth:`successor`.

        ``candidates`` are ``(Prepared, successor key, action indices, operand
        branches)`` for the state's open branches ``shapes``. Each effect is
        decided once, cheapest test first (see the module docstring): the route,
        the rejections carried down the episode (``2 * eid + has_c``; a rejection
        with C kept implies one without), the cost floors (:meth:`cannot_fit`),
        the witness (:meth:`quick_fit`), then the exact check (:meth:`check_prepared`).
        New rejections are added to ``state.rejected``.
        """
        w = self.state_witness(state)
        if w is None:  # the state itself cannot be finished, so no state after it can
            return []
        rejected = state.rejected or frozenset()
        new_rejected = []
        flags = [shape_flags(s) for s in shapes]
        counts = [sum(f[k] for f in flags) for k in range(3)]
        slack = (self.slack(state, False), self.slack(state, True))
        headroom = (self.headroom(state, False), self.headroom(state, True))
        legal = []
        for pr, key, idx, ops in candidates:
            keeps_c = self.route_for(pr, ops, counts, flags)
            if keeps_c is None:
                continue  # H or W would be gone for good
            has_c = int(keeps_c)
            code = 2 * pr.eid
            if code + has_c in rejected or code + 1 in rejected:
                continue
            if self.cannot_fit(pr, headroom[has_c]):
                new_rejected.append(code + has_c)
                continue
            res = self.quick_fit(pr, w, slack[has_c])
            if res is None:
                res = self.check_prepared(state, pr, bool(has_c))
                if res is None:
                    new_rejected.append(code + has_c)
                    continue
            legal.append(idx)
            succ[key] = (pr, res)
        if new_rejected:
            state.rejected = rejected.union(new_rejected)
        return legal

    def verdict(self, state: SearchState, pr: Prepared, ops: tuple):
        """The decision for one effect on branches ``ops`` without the whole mask:
        the successor's witness (as :meth:`check_prepared` gives it), or None."""
        graph = state.graph
        flags = [shape_flags(graph.branch_shape(i)) for i in range(graph.width)]
        counts = [sum(f[k] for f in flags) for k in range(3)]
        has_c = self.route_for(pr, ops, counts, flags)
        return None if has_c is None else self.check_prepared(state, pr, has_c)

    def check(self, state: SearchState, inf: Inference, operands: Sequence[int]) -> tuple | None:
        """Can the state after applying ``inf`` to ``operands`` still be finished?

        Returns:
            ``(witness, costs, domains)`` for the successor when it can be
            finished (``costs``/``domains`` may be None), else None.
        """
        graph = state.graph
        shapes = [graph.branch_shape(i) for i in range(graph.width)]
        shapes[operands[0]] = inf.shape
        if len(operands) == 2:
            del shapes[operands[1]]
        spatial_ok, has_c = route(shapes)
        if not spatial_ok:
            return None
        return self.check_prepared(state, Prepared(inf, None, free_symbol(graph.n_free)), has_c)

    def check_prepared(self, state: SearchState, pr: Prepared, has_c: bool) -> tuple | None:
        """:meth:`check` once the route is known (H and W survive; ``has_c``)."""
        w = self.state_witness(state)
        if w is None:
            return None
        inf = pr.inf
        base_f, base_p = state.witness_costs
        extra = self._extra(has_c)
        new_syms = pr.new_syms
        wkey = tuple(w[s] for s in pr.old_syms)
        vkey = (pr.eid, wkey, has_c, tuple(base_f), tuple(base_p))
        hit = self._verdicts.get(vkey)
        if hit is not None:  # the same effect, sizes and costs as in an earlier state
            self.stats["witness"] += 1
            cand, costs = hit
            return ({**w, new_syms[0]: cand} if new_syms else w), costs, None
        for cand, d_f, d_p in self._effect_table(pr, w, wkey):
            verdict = _compare(base_f, d_f, extra[0], self._lims_f)
            if verdict:
                verdict = min(verdict, _compare(base_p, d_p, extra[1], self._lims_p))
            w2 = {**w, new_syms[0]: cand} if new_syms else w
            if verdict == _NEAR:
                verdict = _FITS if self._fits_exact(state.graph, inf, w2, has_c) else 0
            if verdict == _FITS:
                self.stats["witness"] += 1
                costs = ([a + b for a, b in zip(base_f, d_f)], [a + b for a, b in zip(base_p, d_p)])
                if len(self._verdicts) > 200_000:
                    self._verdicts.clear()
                self._verdicts[vkey] = (cand, costs)
                return w2, costs, None
        domains = self._propagate(state, pr, new_syms)
        if domains is None or self._bound_fails(state, pr, domains, extra):
            self.stats["bound"] += 1
            return None
        repaired = self._repair(state, pr, w, new_syms, has_c, domains)
        if repaired is not None:
            self.stats["repair"] += 1
            return repaired, None, domains
        cons = state.graph.constraints.copy()
        cons.add(inf)
        w2 = self._solve(cons, state.graph.free_symbols + tuple(new_syms), has_c)
        return None if w2 is None else (w2, None, domains)

    def _effect_table(self, pr: Prepared, w: dict, wkey: tuple) -> list:
        """``[(choice for the new size, flops per placement, params per placement)]``
        for the choices that keep the action's own constraints (integral, equal,
        within the tensor cap) under ``w``; cached by effect and by the witness
        values of the sizes it touches, which rarely change."""
        key = (pr.eid, wkey)
        hit = self._effects.get(key)
        if hit is not None:
            return hit
        num = self.num
        hit = []
        base = {s: w[s] for s in pr.old_syms}
        for cand in self._choices if pr.new_syms else (None,):
            w2 = {**base, pr.new_syms[0]: cand} if pr.new_syms else base
            if not all(num.integral(m, w2) for m in pr.integral):
                continue
            if not all(num.equal_one(m, w2) for m in pr.equal):
                break  # equalities only involve existing sizes: no choice fixes them
            if not num.volume_ok(pr.volume[0], w2):
                continue
            hit.append((cand, num.poly_float(pr.inf.flops, w2), num.poly_float(pr.inf.params, w2)))
        if len(self._effects) > 200_000:
            self._effects.clear()
        self._effects[key] = hit
        return hit

    def _fits_exact(self, graph: KernelGraph, inf: Inference, w: dict, has_c: bool) -> bool:
        """Exact budget check (only when the float check is within rounding of a limit)."""
        extra = ((), ()) if has_c else (ROUTE_C_FLOPS, ROUTE_C_PARAMS)
        flops = self.num.poly(poly_terms(graph.constraints.flops) + tuple(inf.flops) + extra[0], w)
        params = self.num.poly(poly_terms(graph.constraints.params) + tuple(inf.params) + extra[1], w)
        return all(f <= lim.flops and p <= lim.params for f, p, lim in zip(flops, params, self.solver.limits))

    # -- domains and bounds --------------------------------------------------------
    def _filter(self, domains: dict, monos, check) -> bool:
        """Narrow single-symbol domains by ``check``; False when one empties.

        Results are cached per (monomial, check, domain): they recur across states."""
        cache = self._filter_cache
        for m in monos:
            free = m.free_symbols()
            if len(free) != 1:
                continue
            s = free[0]
            dom = domains[s]
            key = (m, check.__name__, dom)
            kept = cache.get(key)
            if kept is None:
                kept = tuple(c for c in dom if check(m, {s: c}))
                if len(cache) > 200_000:
                    cache.clear()
                cache[key] = kept
            if not kept:
                return False
            domains[s] = kept
        return True

    def domains(self, state: SearchState) -> dict | None:
        """Per-symbol choices allowed by single-symbol constraints (cached on the state)."""
        hit = state.domains
        if hit is not None:
            return hit
        doms = {s: self._all for s in state.graph.free_symbols}
        c = state.graph.constraints
        ok = (
            self._filter(doms, c.integral, self.num.integral)
            and self._filter(doms, c.equal, self.num.equal_one)
            and self._filter(doms, c.volume, self.num.volume_ok)
        )
        state.domains = doms if ok else None
        return state.domains

    def _propagate(self, state: SearchState, pr: Prepared, new_syms: list) -> dict | None:
        base = self.domains(state)
        if base is None:
            return None
        doms = dict(base)
        for s in new_syms:
            doms[s] = self._all
        ok = (
            self._filter(doms, pr.integral, self.num.integral)
            and self._filter(doms, pr.equal, self.num.equal_one)
            and self._filter(doms, pr.volume, self.num.volume_ok)
        )
        return doms if ok else None

    def _bounds(self, domains: dict) -> dict:
        """Symbol -> (lowest, highest value per placement) over its domain."""
        out = {}
        cache = self._bounds_cache
        for s, choices in domains.items():
            hit = cache.get(choices)
            if hit is None:
                vals = [self._value[c] for c in choices]
                n = len(vals[0])
                hit = ([min(v[i] for v in vals) for i in range(n)], [max(v[i] for v in vals) for i in range(n)])
                cache[choices] = hit
            out[s] = hit
        return out

    def _floors(self, monos) -> dict:
        """Free part -> per-placement lower bound of its value, from the monomials
        in ``monos`` (integral ones: at least 1; equalities: exactly 1) that
        involve two or more sizes. Independent per-size ranges miss these: with
        ``x2/x1`` integral, a cost ``K*x2/x1`` is at least ``K``, however small
        ``x2`` and however large ``x1`` may each be."""
        out: dict = {}
        for m in monos:
            free, per_p = self.num.compile_float(m)
            if len(free) < 2:
                continue  # single sizes: their domains already say it
            vals = [1.0 / k for k, _ in per_p]
            old = out.get(free)
            out[free] = vals if old is None else [max(a, b) for a, b in zip(old, vals)]
        return out

    def _state_floors(self, state: SearchState) -> dict:
        hit = state.floors
        if hit is None:
            c = state.graph.constraints
            hit = state.floors = self._floors(tuple(c.integral) + tuple(c.equal))
        return hit

    def _lb(self, terms, bounds: dict, floors: dict) -> list:
        out = [0.0] * len(self.solver.placements)
        num = self.num
        for m in terms:
            vals = num.min_value(m, bounds)
            if floors:
                free, per_p = num.compile_float(m)
                fl = floors.get(free)
                if fl is not None:
                    vals = [max(v, k * f) for v, (k, _), f in zip(vals, per_p, fl)]
            for i, v in enumerate(vals):
                out[i] += v
        return out

    def _state_lb(self, state: SearchState) -> tuple:
        """Lower bounds of the state's own FLOPs and params per placement over its domains (cached on it)."""
        base = state.lb
        if base is None:
            domains = self.domains(state)
            if domains is None:  # no sizes at all: nothing fits
                inf = [float("inf")] * len(self._lims_f)
                base = (inf, inf)
            else:
                base = self._costs_lb(state, domains)
            state.lb = base
        return base

    def _costs_lb(self, state: SearchState, domains: dict) -> tuple:
        """Lower bounds of the state's own FLOPs and params per placement over ``domains``."""
        c = state.graph.constraints
        bounds, floors = self._bounds(domains), self._state_floors(state)
        return self._lb(poly_terms(c.flops), bounds, floors), self._lb(poly_terms(c.params), bounds, floors)

    def _effect_lb(self, pr: Prepared, bounds: dict, floors: dict) -> tuple | None:
        """Lower bounds of the action's own FLOPs and params per placement over
        ``bounds``, or None when one of its tensors breaks the cap whatever the sizes."""
        for m in pr.volume:
            if any(v > lim.volume * (1 + 1e-9) for v, lim in zip(self.num.min_value(m, bounds), self.solver.limits)):
                return None
        return self._lb(pr.inf.flops, bounds, floors), self._lb(pr.inf.params, bounds, floors)

    def _bound_fails(self, state: SearchState, pr: Prepared, domains: dict, extra: tuple) -> bool:
        """Lower bounds over independent domains already break a limit.

        The state's own costs are bounded once per state over its domains (a
        valid, slightly weaker bound when the action narrows a domain)."""
        base_domains = self.domains(state)
        if any(len(domains[s]) < len(base_domains[s]) for s in base_domains):  # the action narrowed a size
            base = self._costs_lb(state, domains)
        else:
            base = self._state_lb(state)
        floors = self._state_floors(state)
        own = self._floors(pr.integral + pr.equal)
        if own:
            floors = {**floors, **{f: [max(a, b) for a, b in zip(v, floors.get(f, v))] for f, v in own.items()}}
        touched = set(pr.new_syms)
        for m in pr.volume + tuple(pr.inf.flops) + tuple(pr.inf.params):
            touched.update(m.free_symbols())
        lb = self._effect_lb(pr, self._bounds({s: domains[s] for s in touched}), floors)
        if lb is None:
            return True
        d_f, d_p = lb
        lb_f = [a + b for a, b in zip(base[0], d_f)]
        lb_p = [a + b for a, b in zip(base[1], d_p)]
        for i, lim in enumerate(self.solver.limits):
            if lb_f[i] + extra[0][i] > lim.flops * (1 + 1e-9) or lb_p[i] + extra[1][i] > lim.params * (1 + 1e-9):
                return True
        return False

    # -- local repair ---------------------------------------------------------------
    def _system(self, state: SearchState) -> tuple:
        """The graph's constraints and cost terms indexed by symbol (cached on the state):
        ``(symbol -> [(kind, monomial)], symbol -> flops terms, symbol -> params terms)``."""
        hit = state.system
        if hit is None:
            c = state.graph.constraints
            index: dict = {}
            for kind, monos in (("integral", c.integral), ("equal", c.equal), ("volume", c.volume)):
                for m in monos:
                    for s in m.free_symbols():
                        index.setdefault(s, []).append((kind, m))
            costs = []
            for terms in (poly_terms(c.flops), poly_terms(c.params)):
                by_symbol: dict = {}
                for m in terms:
                    for s in m.free_symbols():
                        by_symbol.setdefault(s, []).append(m)
                costs.append(by_symbol)
            hit = (index, costs[0], costs[1])
            state.system = hit
        return hit

    def _repair(self, state: SearchState, pr: Prepared, w: dict, new_syms: list, has_c: bool, domains: dict) -> dict | None:
        """Re-choose one size (new sizes start at their smallest) until every
        constraint holds; the cheapest such witness, or None.

        The sizes the action touches are tried first; then every other size, since
        making room in the budget elsewhere is what CP-SAT found in most of the
        cases the first pass missed (a single other size changed in ~3 of 4 of
        them, in random rollouts at ResNet-18's placements)."""
        index, flops_by, params_by = self._system(state)
        inf = pr.inf
        touched = set(new_syms)
        for m in pr.integral + pr.equal + tuple(inf.flops) + tuple(inf.params):
            touched.update(m.free_symbols())
        others = sorted(set(state.graph.free_symbols) - touched)
        if not touched and not others:
            return None
        num = self.num
        lims = self.solver.limits
        checks = {"integral": num.integral, "equal": num.equal_one, "volume": num.volume_ok}
        # costs are updated, not recomputed: the state's costs under the witness,
        # minus its terms in the size being re-chosen, plus those terms re-valued
        base_f, base_p = state.witness_costs
        x_f, x_p = self._extra(has_c)
        fixed_f = [a + b for a, b in zip(base_f, x_f)]
        fixed_p = [a + b for a, b in zip(base_p, x_p)]
        start = {**w, **{s: domains[s][0] for s in new_syms}}
        best = None
        for s in sorted(touched) + [None] + others:
            if s is None:  # the action's own sizes are done
                if best is not None:
                    break
                continue
            own_f, own_p = flops_by.get(s, ()), params_by.get(s, ())
            was_f, was_p = num.poly_float(own_f, start), num.poly_float(own_p, start)
            for choice in domains[s]:
                w2 = {**start, s: choice}
                # the budget first (floats, a few terms): it is what usually fails
                now_f, eff_f = num.poly_float(own_f, w2), num.poly_float(inf.flops, w2)
                now_p, eff_p = num.poly_float(own_p, w2), num.poly_float(inf.params, w2)
                f = [a - b + c + d for a, b, c, d in zip(fixed_f, was_f, now_f, eff_f)]
                p = [a - b + c + d for a, b, c, d in zip(fixed_p, was_p, now_p, eff_p)]
                if any(a > lim.flops * (1 - 1e-9) or b > lim.params * (1 - 1e-9) for a, b, lim in zip(f, p, lims)):
                    continue
                util = sum(a / lim.flops + b / lim.params for a, b, lim in zip(f, p, lims))
                if best is not None and util >= best[0]:
                    continue
                if (
                    all(num.integral(m, w2) for m in pr.integral)
                    and all(num.equal_one(m, w2) for m in pr.equal)
                    and num.volume_ok(pr.volume[0], w2)
                    and all(checks[kind](m, w2) for kind, m in index.get(s, ()))
                ):
                    best = (util, w2)
        return None if best is None else best[1]
