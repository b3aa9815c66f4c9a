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

**With a latency budget** (a latency model in the solver, see
:mod:`kasrl.latency`) every action costs predicted latency, and so does the
finishing step: its folds, adds and route-*c* projection are real ops. The
oracle charges each state what finishing it would cost at most: per open
branch the folds the finishing step would apply to it (their latency is a
sum of monomials of the sizes, exact for that branch), one add per extra
branch at the largest shape it can have (``[1, C, 1, 1, H, W]``, an upper
bound) and the route-*c* tail (fold H, fold W, projection 1 -> C, add). So a
legal action still always leads to a kernel that finishes within budget. That
reserve is not monotone along an episode (folding or contracting a branch can
remove pending folds), so with latency budgeted only the rejections decided by
the cost floors, which ignore the reserve, are carried down an episode; and
forks are checked like actions (a copy adds a branch to finish).

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
   route) stays rejected (with latency budgeted, only rejections that hold
   without the finishing step's latency, which shrinks when branches merge);
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
from collections.abc import Sequence
from operator import le
from typing import TYPE_CHECKING, NamedTuple

from kasrl.ir.dims import ONE, C, free_symbol
from kasrl.ir.graph import Constraints, KernelGraph, infer, poly_terms
from kasrl.ir.primitives import Binary, Fold, Inference, Projection, SpaceContext
from kasrl.ir.shape import C_SLOT, G_SLOT, H_SLOT, INPUT_SHAPE, KH_SLOT, KW_SLOT, SLOTS, W_SLOT, Shape, volume
from kasrl.solver.cpsat import solve_sizes
from kasrl.solver.numeric import NumericModel
from kasrl.solver.solve import SizeSolver

if TYPE_CHECKING:  # the space imports the oracle, not the other way round
    from kasrl.space.state import SearchState

__all__ = ["CompletionOracle", "Fit", "Prepared", "route", "shape_flags", "ROUTE_C_FLOPS", "ROUTE_C_PARAMS", "COST_KINDS"]

ROUTE_C_FLOPS = (C * 2,)
ROUTE_C_PARAMS = (C,)
#: The costs a budget can limit, in the order the oracle keeps them (latency only with a latency model).
COST_KINDS = ("flops", "params", "latency")
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
    for b, d, x, lim in zip(base, delta, extra, limits, strict=False):
        total = b + d + x
        if total > lim * (1 + 1e-9):
            return 0
        if total > lim * (1 - 1e-9):
            out = _NEAR
    return out


def _vsum(*vectors: list) -> list:
    """Element-wise sum of per-placement vectors."""
    return [sum(xs) for xs in zip(*vectors, strict=False)]


class Fit(NamedTuple):
    """A fast-path acceptance, kept lazy: the successor's witness is the state's,
    extended with ``cand`` for the action's new size (None: it has none), and its
    costs are the state's plus ``deltas`` (per cost kind, per placement)."""

    cand: tuple | None
    deltas: tuple


class Prepared:
    """An inference with what the oracle needs precomputed (cached per state shape).

    Attributes:
        inf: the inference.
        integral, equal, volume: the monomials it adds that involve free sizes
            (volumes: all).
        trivial: same shape as the single operand and nothing new to satisfy or pay.
        flags: :func:`shape_flags` of the output.
        eid: a small int identifying the effect (for per-state memos).
        costs: the inference's cost terms per kind (``COST_KINDS``).
    """

    __slots__ = ("inf", "integral", "equal", "volume", "trivial", "flags", "eid", "new_syms", "old_syms", "costs")
    _ids: dict = {}

    def __init__(self, inf: Inference, operand_shape: Shape | None, new_symbol: int | None = None, tag: str = "") -> None:
        self.inf = inf
        self.new_syms = [new_symbol] if inf.new_symbols else []
        self.integral = tuple(m for m in inf.shape if m.free_symbols()) + tuple(m for m in inf.integral if m.free_symbols())
        self.equal = tuple(inf.equal)
        self.volume = (volume(inf.shape),)
        self.costs = (tuple(inf.flops), tuple(inf.params), tuple(inf.latency))
        self.trivial = not tag and operand_shape is not None and inf.shape == operand_shape and not (
            inf.new_symbols or inf.flops or inf.params or inf.equal or inf.integral or inf.latency
        )
        self.flags = shape_flags(inf.shape)
        key = (inf.shape, inf.new_symbols, inf.flops, inf.params, inf.equal, inf.integral)
        if inf.latency or tag:
            key += (inf.latency, tag)
        self.eid = Prepared._ids.setdefault(key, len(Prepared._ids))
        syms = set()
        for m in self.integral + self.equal + self.volume + tuple(inf.flops) + tuple(inf.params) + tuple(inf.latency):
            syms.update(m.free_symbols())
        self.old_syms = tuple(sorted(syms - set(self.new_syms)))

    @classmethod
    def fork(cls, shape: Shape) -> Prepared:
        """The effect of forking a branch of ``shape``: a copy to finish, nothing else."""
        return cls(Inference(shape), None, tag="fork")


class CompletionOracle:
    """Answers "can this kernel still be finished?" for states and candidate actions.

    Args:
        solver: the size solver (its placements, budget, CP-SAT settings and,
            when latency is budgeted, the latency model).
    """

    def __init__(self, solver: SizeSolver) -> None:
        self.solver = solver
        self.num = NumericModel(solver.placements, solver.limits)
        self.cache: dict = {}
        self._effects: dict = {}
        self._verdicts: dict = {}
        self.stats: Counter = Counter()
        self.permanent = False
        """Whether the last rejection by :meth:`check_prepared` holds for the rest of the episode."""
        dom = solver.config.domain
        legal = dom.choices()
        first = [(False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, -1), (True, -2), (True, -3), (True, 1)]
        self._choices = [c for c in first if c in legal] + [c for c in legal if c not in first]
        self._all = tuple(self._choices)
        self._filter_cache: dict = {}
        self._effect_floors: dict = {}
        self._bounds_cache: dict = {}
        n = len(solver.placements)
        self.latency = solver.latency
        self.n_kinds = 3 if self.latency is not None else 2
        self._pending: dict = {}
        if self.latency is not None:
            self._setup_closing()
        route_terms = (ROUTE_C_FLOPS, ROUTE_C_PARAMS, self._tail_terms if self.latency is not None else ())
        self._route_terms = route_terms[: self.n_kinds]
        self._route_extra = tuple(self.num.poly_float(t, {}) for t in self._route_terms)
        self._no_extra = tuple([0.0] * n for _ in range(self.n_kinds))
        self._value = {c: [float(p.c) ** int(c[0]) * 2.0 ** c[1] for p in solver.placements] for c in legal}
        self._lims = tuple([getattr(lim, kind) for lim in solver.limits] for kind in COST_KINDS[: self.n_kinds])
        self._lims_f, self._lims_p = self._lims[0], self._lims[1]

    # -- the finishing step's latency (a latency model only) ------------------------
    def _setup_closing(self) -> None:
        """The ops the finishing step may add, priced by the latency model."""
        ctx = SpaceContext(latency=self.latency)
        full = INPUT_SHAPE  # [1, C, 1, 1, H, W]: the largest a folded branch can be
        add = Binary(op="add")
        self._add_terms = infer(add, (full, full), 0, ctx).latency
        self._add_float = self.num.poly_float(self._add_terms, {})
        pooled = (ONE, ONE, ONE, ONE, full[H_SLOT], full[W_SLOT])
        tail = []
        shape = pooled
        for slot in (H_SLOT, W_SLOT):  # route c: a pooled copy, projected to C and added
            fold = Fold(slot=SLOTS[slot], mode="mean")
            inf = infer(fold, (shape,), 0, ctx)
            tail.extend(inf.latency)
            shape = inf.shape
        proj = infer(Projection(out="C", grouped=False), (shape,), 0, ctx)
        tail.extend(proj.latency)
        tail.extend(infer(add, (pooled, proj.shape), 0, ctx).latency)
        self._tail_terms = tuple(tail)
        self._fold_ctx = ctx

    def pending_terms(self, shape: Shape, has_c: bool) -> tuple:
        """Latency of the folds the finishing step applies to a branch of ``shape``
        (G, KH and KW, then C unless it is ``C`` on route *a*, or 1), as monomials (cached)."""
        key = (shape, has_c)
        hit = self._pending.get(key)
        if hit is None:
            terms: list = []
            for slot in (G_SLOT, KH_SLOT, KW_SLOT, C_SLOT):
                if shape[slot].is_one or (slot == C_SLOT and has_c and shape[slot] == C):
                    continue
                inf = infer(Fold(slot=SLOTS[slot], mode="mean"), (shape,), 0, self._fold_ctx)
                terms.extend(inf.latency)
                shape = inf.shape
            hit = self._pending[key] = tuple(terms)
        return hit

    def closing_terms(self, shapes: Sequence[Shape], has_c: bool) -> tuple:
        """The latency the finishing step may add to a state with open branches
        ``shapes``, beyond the route's static tail: every branch's folds and one
        add per extra branch (as monomials; empty without a latency model)."""
        if self.latency is None:
            return ()
        terms: list = []
        for s in shapes:
            terms.extend(self.pending_terms(s, has_c))
        if len(shapes) > 1:
            terms.extend(m * (len(shapes) - 1) for m in self._add_terms)
        return tuple(terms)

    def _pending_floor(self, shape: Shape, has_c: bool) -> list:
        """A lower bound, whatever the sizes, of the latency of a branch's pending folds (cached per shape and route)."""
        key = ("floor", shape, has_c)
        hit = self._pending.get(key)
        if hit is None:
            terms = self.pending_terms(shape, has_c)
            syms = {s for m in terms for s in m.free_symbols()}
            hit = self._pending[key] = self._lb(terms, self._bounds({s: self._all for s in syms}), {})
        return hit

    def _closing_floor(self, state: SearchState, has_c: bool, ops: tuple, width_after: int, shape: Shape) -> list:
        """A lower bound of the finishing step's latency after an effect on ``ops`` with output ``shape``:
        every branch's pending folds, whatever the sizes, and the merges (cheap: per-shape floors)."""
        key = ("floor", has_c, ops, width_after)
        if state.closing is None:
            state.closing = {}
        rest = state.closing.get(key)
        if rest is None:
            graph = state.graph
            rest = [(width_after - 1) * a for a in self._add_float]
            for i in range(graph.width):
                if i not in ops:
                    rest = [a + b for a, b in zip(rest, self._pending_floor(graph.branch_shape(i), has_c), strict=False)]
            state.closing[key] = rest
        return [a + b for a, b in zip(rest, self._pending_floor(shape, has_c), strict=False)]

    def _branch_pending(self, state: SearchState, w: dict, has_c: bool) -> list:
        """Per open branch, the float latency of its pending folds under ``w`` (cached per state and route)."""
        if state.closing is None:
            state.closing = {}
        hit = state.closing.get(has_c)
        if hit is None:
            graph = state.graph
            hit = state.closing[has_c] = [self.num.poly_float(self.pending_terms(graph.branch_shape(i), has_c), w)
                                          for i in range(graph.width)]
        return hit

    def _rest(self, state: SearchState, w: dict, has_c: bool, ops: tuple, width_after: int) -> list:
        """Float closing latency of the branches an effect on ``ops`` leaves alone, plus the merges (cached per state)."""
        key = (has_c, ops, width_after)
        pend = self._branch_pending(state, w, has_c)
        hit = state.closing.get(key)
        if hit is None:
            out = [(width_after - 1) * a for a in self._add_float]
            for i, vec in enumerate(pend):
                if i not in ops:
                    out = [a + b for a, b in zip(out, vec, strict=False)]
            hit = state.closing[key] = out
        return hit

    def _successor_shapes(self, state: SearchState, pr: Prepared, ops: tuple) -> list:
        graph = state.graph
        shapes = [graph.branch_shape(i) for i in range(graph.width) if i not in ops]
        return shapes + [pr.inf.shape]

    # -- witnesses ----------------------------------------------------------------
    def _costs(self, constraints: Constraints, w: dict) -> tuple:
        """Float costs per kind and placement under ``w``."""
        polys = (constraints.flops, constraints.params, constraints.latency)[: self.n_kinds]
        return tuple(self.num.poly_float(poly_terms(p), w) for p in polys)

    def _extra(self, has_c: bool) -> tuple:
        """The route's static extra cost per kind (floats): route *c*'s projection, and its latency tail."""
        return self._no_extra if has_c else self._route_extra

    def _solve(self, constraints: Constraints, symbols: tuple, has_c: bool, pending: tuple = ()) -> dict | None:
        """CP-SAT: cheapest sizes satisfying ``constraints`` plus the route's extra cost
        (and, with latency, the finishing step's ``pending`` latency terms)."""
        key = (constraints.key(), has_c, pending) if pending else (constraints.key(), has_c)
        if key in self.cache:
            self.stats["cache_hit"] += 1
            return self.cache[key]
        self.stats["cpsat"] += 1
        extra = ((), (), ()) if has_c else (ROUTE_C_FLOPS, ROUTE_C_PARAMS, self._route_terms[2] if self.n_kinds > 2 else ())
        prob = self.solver.problem(constraints, symbols, extra[0], extra[1], extra_latency=extra[2] + tuple(pending))
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
        shapes = [graph.branch_shape(i) for i in range(graph.width)]
        spatial_ok, has_c = route(shapes)
        if not spatial_ok:
            return None
        w = self._solve(graph.constraints, graph.free_symbols, has_c, self.closing_terms(shapes, has_c))
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
        polys = (c.flops, c.params, c.latency)[: self.n_kinds]
        totals = [num.poly(poly_terms(p), w) for p in polys]
        return all(v <= lim for kind, lims in zip(totals, self._lims, strict=False) for v, lim in zip(kind, lims, strict=False))

    def completable(self, state: SearchState) -> bool:
        """True when ``state`` can still be finished legally within budget."""
        return self.state_witness(state) is not None

    # -- candidate actions ---------------------------------------------------------
    def slack(self, state: SearchState, has_c: bool) -> tuple:
        """Costs per kind and placement that an action may still add to ``state``
        and clearly fit, the route's static cost included (a 1e-9 relative margin below each
        limit, so a float sum that passes is within budget exactly). Cached per state."""
        return self._room(state, ("slack", has_c), lambda: state.witness_costs, 1 - 1e-9)

    def _room(self, state: SearchState, key: tuple, base, factor: float) -> tuple:
        """Costs per kind and placement between ``factor`` x each limit and
        ``base()`` plus the route cost of ``key[1]`` (cached on the state under ``key``)."""
        if state.room is None:
            state.room = {}
        cache = state.room
        hit = cache.get(key)
        if hit is None:
            extra = self._extra(key[1])
            hit = tuple([lim * factor - b - x for lim, b, x in zip(lims, costs, xs, strict=True)]
                        for lims, costs, xs in zip(self._lims, base(), extra, strict=True))
            cache[key] = hit
        return hit

    def quick_fit(self, pr: Prepared, w: dict, slack: tuple, has_c: bool = True, rest: list | None = None) -> Fit | None:
        """The witness fast path of :meth:`check_prepared`, for the mask's inner loop:
        a :class:`Fit` when the witness, extended with the first size choice that
        keeps the action's own constraints and clearly fits the ``slack``, works;
        None when undecided (then :meth:`check_prepared` decides exactly).

        With latency budgeted, ``rest`` is the closing latency of the branches the
        effect leaves alone (:meth:`_rest`); the new branch's pending folds are
        added per size choice."""
        wkey = tuple([w[s] for s in pr.old_syms])
        table = self._effects.get((pr.eid, wkey))
        if table is None:
            table = self._effect_table(pr, w, wkey)
        slack_f, slack_p = slack[0], slack[1]
        for cand, deltas, pend in table:
            if all(map(le, deltas[0], slack_f)) and all(map(le, deltas[1], slack_p)):  # C-level loops: the hottest code of a search
                if rest is None:
                    return Fit(cand, deltas)
                need = [d + p + r for d, p, r in zip(deltas[2], pend[has_c], rest, strict=False)]
                if all(map(le, need, slack[2])):
                    return Fit(cand, deltas)
        return None

    def effect_floor(self, pr: Prepared) -> tuple | None:
        """Lower bounds of the action's own costs per kind and placement over
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
        """Costs per kind and placement left above the lower bound of the
        state's own costs (with the route's static cost): an action whose
        :meth:`effect_floor` exceeds it anywhere cannot be completed (cached per state).

        Along an episode the bound is kept running (:meth:`advance_lb`): the
        previous state's bound plus the action's floor, a valid bound that costs
        nothing to update. The finishing step's pending latency is left out, so
        what this rejects stays rejected for the rest of the episode."""
        return self._room(state, ("headroom", has_c), lambda: state.lb_running or self._state_lb(state), 1 + 1e-9)

    def cannot_fit(self, pr: Prepared, headroom: tuple) -> bool:
        """A cheap, exact rejection: the action's own cheapest costs do not fit in
        the state's :meth:`headroom` (or its own constraints cannot hold).
        Costs add up, so a lower bound of each part bounds the sum.
        """
        floor = self.effect_floor(pr)
        return floor is None or not all(all(map(le, f, h)) for f, h in zip(floor, headroom, strict=False))

    def advance_lb(self, state: SearchState, pr: Prepared | None) -> tuple | None:
        """The running lower bound of the state after applying ``pr`` to ``state``
        (``pr`` None: an action that adds no cost); None when none is known."""
        base = state.lb_running or state.lb
        if base is None or pr is None:
            return base
        floor = self.effect_floor(pr)
        if floor is None:
            return None
        return tuple([a + b for a, b in zip(x, y, strict=False)] for x, y in zip(base, floor, strict=False))

    def successor(self, state: SearchState, pr: Prepared, res: tuple) -> tuple:
        """``(witness, costs, domains)`` of the state after an accepted action
        (``res``: a :class:`Fit` or what :meth:`check_prepared` returned)."""
        if not isinstance(res, Fit):
            return res
        w = state.witness
        witness = {**w, pr.new_syms[0]: res.cand} if pr.new_syms else w
        costs = tuple([a + b for a, b in zip(base, d, strict=False)] for base, d in zip(state.witness_costs, res.deltas, strict=False))
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
        branches)`` for the state's open branches ``shapes`` (a fork: no operands,
        ``Prepared.fork``). Each effect is decided once, cheapest test first (see
        the module docstring): the route, the rejections carried down the episode
        (``2 * eid + has_c``; a rejection with C kept implies one without), the
        cost floors (:meth:`cannot_fit`), the witness (:meth:`quick_fit`), then the
        exact check (:meth:`check_prepared`). New rejections are added to
        ``state.rejected`` (with latency budgeted, only those that hold without
        the finishing step's latency: see :attr:`permanent`).
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
        carry_exact = self.latency is None
        width = len(shapes)
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
            if not carry_exact:  # the floor plus the finishing step's: a cheap rejection for this state only
                need = self._closing_floor(state, bool(has_c), ops, width - len(ops) + 1, pr.inf.shape)
                if any(f + n > h for f, n, h in zip(self.effect_floor(pr)[2], need, headroom[has_c][2], strict=False)):
                    continue
            rest = None if carry_exact else self._rest(state, w, bool(has_c), ops, width - len(ops) + 1)
            res = self.quick_fit(pr, w, slack[has_c], has_c, rest)
            if res is None:
                res = self.check_prepared(state, pr, bool(has_c), ops)
                if res is None:
                    if carry_exact or self.permanent:
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
        return None if has_c is None else self.check_prepared(state, pr, has_c, ops)

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
        return self.check_prepared(state, Prepared(inf, None, free_symbol(graph.n_free)), has_c, tuple(operands))

    def check_prepared(self, state: SearchState, pr: Prepared, has_c: bool, ops: tuple = ()) -> tuple | None:
        """:meth:`check` once the route is known (H and W survive; ``has_c``); ``ops``:
        the branches the effect replaces (with latency budgeted, what is left to finish depends on them)."""
        self.permanent = self.latency is None
        w = self.state_witness(state)
        if w is None:
            return None
        inf = pr.inf
        base = state.witness_costs
        extra = self._extra(has_c)
        new_syms = pr.new_syms
        wkey = tuple(w[s] for s in pr.old_syms)
        vkey = (pr.eid, wkey, has_c, tuple(base[0]), tuple(base[1]))
        rest = pending = None
        if self.latency is not None:
            width_after = state.graph.width - len(ops) + 1
            rest = self._rest(state, w, has_c, ops, width_after)
            pending = self.closing_terms(self._successor_shapes(state, pr, ops), has_c)
            vkey += (tuple(base[2]), tuple(rest))
        hit = self._verdicts.get(vkey)
        if hit is not None:  # the same effect, sizes and costs as in an earlier state
            self.stats["witness"] += 1
            cand, costs = hit
            return ({**w, new_syms[0]: cand} if new_syms else w), costs, None
        for cand, deltas, pend in self._effect_table(pr, w, wkey):
            verdict = _compare(base[0], deltas[0], extra[0], self._lims[0])
            if verdict:
                verdict = min(verdict, _compare(base[1], deltas[1], extra[1], self._lims[1]))
            if verdict and rest is not None:
                need = [d + p + r for d, p, r in zip(deltas[2], pend[has_c], rest, strict=False)]
                verdict = min(verdict, _compare(base[2], need, extra[2], self._lims[2]))
            w2 = {**w, new_syms[0]: cand} if new_syms else w
            if verdict == _NEAR:
                verdict = _FITS if self._fits_exact(state.graph, inf, w2, has_c, pending or ()) else 0
            if verdict == _FITS:
                self.stats["witness"] += 1
                costs = tuple([a + b for a, b in zip(x, d, strict=False)] for x, d in zip(base, deltas, strict=False))
                if len(self._verdicts) > 200_000:
                    self._verdicts.clear()
                self._verdicts[vkey] = (cand, costs)
                return w2, costs, None
        self.permanent = True
        domains = self._propagate(state, pr, new_syms)
        if domains is None or self._bound_fails(state, pr, domains, extra, pending or ()):
            self.stats["bound"] += 1
            # without the finishing step's latency the bound only grows along an episode: if it fails
            # even so, the effect stays rejected (the closing latency shrinks when branches merge)
            if domains is not None and pending:
                self.permanent = self._bound_fails(state, pr, domains, extra, ())
            return None
        self.permanent = not pending
        repaired = self._repair(state, pr, w, new_syms, has_c, domains, pending or ())
        if repaired is not None:
            self.stats["repair"] += 1
            return repaired, None, domains
        cons = state.graph.constraints.copy()
        cons.add(inf)
        symbols = state.graph.free_symbols + tuple(new_syms)
        if pending:  # first without the finishing step's latency: most rejections hold even so, and then for good
            if self._solve(cons, symbols, has_c) is None:
                self.permanent = True
                return None
        w2 = self._solve(cons, symbols, has_c, pending or ())
        return None if w2 is None else (w2, None, domains)

    def _effect_table(self, pr: Prepared, w: dict, wkey: tuple) -> list:
        """``[(choice for the new size, costs per kind and placement, pending)]``
        for the choices that keep the action's own constraints (integral, equal,
        within the tensor cap) under ``w``; cached by effect and by the witness
        values of the sizes it touches, which rarely change. ``pending`` (latency
        only) is the new branch's pending folds per route ``(route c, route a)``."""
        key = (pr.eid, wkey)
        hit = self._effects.get(key)
        if hit is not None:
            return hit
        num = self.num
        hit = []
        base = {s: w[s] for s in pr.old_syms}
        costs = [num.compile_poly(terms) for terms in pr.costs[: self.n_kinds]]
        if self.latency is not None:
            pending = [num.compile_poly(self.pending_terms(pr.inf.shape, route_a)) for route_a in (False, True)]
        for cand in self._choices if pr.new_syms else (None,):
            w2 = {**base, pr.new_syms[0]: cand} if pr.new_syms else base
            if not all(num.integral(m, w2) for m in pr.integral):
                continue
            if not all(num.equal_one(m, w2) for m in pr.equal):
                break  # equalities only involve existing sizes: no choice fixes them
            if not num.volume_ok(pr.volume[0], w2):
                continue
            pend = None
            if self.latency is not None:
                pend = tuple(num.compiled_float(groups, w2) for groups in pending)
            hit.append((cand, tuple(num.compiled_float(groups, w2) for groups in costs), pend))
        if len(self._effects) > 200_000:
            self._effects.clear()
        self._effects[key] = hit
        return hit

    def _fits_exact(self, graph: KernelGraph, inf: Inference, w: dict, has_c: bool, pending: tuple = ()) -> bool:
        """Exact budget check (only when the float check is within rounding of a limit)."""
        c = graph.constraints
        route_terms = tuple(() for _ in range(self.n_kinds)) if has_c else self._route_terms
        own = (tuple(inf.flops), tuple(inf.params), tuple(inf.latency) + tuple(pending))
        polys = (c.flops, c.params, c.latency)
        for k in range(self.n_kinds):
            totals = self.num.poly(poly_terms(polys[k]) + own[k] + route_terms[k], w)
            if not all(v <= lim for v, lim in zip(totals, self._lims[k], strict=False)):
                return False
        return True

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
            out[free] = vals if old is None else [max(a, b) for a, b in zip(old, vals, strict=False)]
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
                    vals = [max(v, k * f) for v, (k, _), f in zip(vals, per_p, fl, strict=False)]
            for i, v in enumerate(vals):
                out[i] += v
        return out

    def _state_lb(self, state: SearchState) -> tuple:
        """Lower bounds of the state's own costs per kind and placement over its domains (cached on it)."""
        base = state.lb
        if base is None:
            domains = self.domains(state)
            if domains is None:  # no sizes at all: nothing fits
                inf = [float("inf")] * len(self._lims_f)
                base = tuple(inf for _ in range(self.n_kinds))
            else:
                base = self._costs_lb(state, domains)
            state.lb = base
        return base

    def _costs_lb(self, state: SearchState, domains: dict) -> tuple:
        """Lower bounds of the state's own costs per kind and placement over ``domains``."""
        c = state.graph.constraints
        bounds, floors = self._bounds(domains), self._state_floors(state)
        polys = (c.flops, c.params, c.latency)[: self.n_kinds]
        return tuple(self._lb(poly_terms(p), bounds, floors) for p in polys)

    def _effect_lb(self, pr: Prepared, bounds: dict, floors: dict) -> tuple | None:
        """Lower bounds of the action's own costs per kind and placement over
        ``bounds``, or None when one of its tensors breaks the cap whatever the sizes."""
        for m in pr.volume:
            if any(v > lim.volume * (1 + 1e-9) for v, lim in zip(self.num.min_value(m, bounds), self.solver.limits, strict=False)):
                return None
        return tuple(self._lb(terms, bounds, floors) for terms in pr.costs[: self.n_kinds])

    def _bound_fails(self, state: SearchState, pr: Prepared, domains: dict, extra: tuple, pending: tuple = ()) -> bool:
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
            floors = {**floors, **{f: [max(a, b) for a, b in zip(v, floors.get(f, v), strict=False)] for f, v in own.items()}}
        touched = set(pr.new_syms)
        for m in pr.volume + tuple(pr.inf.flops) + tuple(pr.inf.params) + tuple(pr.inf.latency) + tuple(pending):
            touched.update(m.free_symbols())
        bounds = self._bounds({s: domains[s] for s in touched})
        lb = self._effect_lb(pr, bounds, floors)
        if lb is None:
            return True
        if pending:
            lb = lb[:2] + (_vsum(lb[2], self._lb(pending, bounds, floors)),)
        for k in range(self.n_kinds):
            for i, lim in enumerate(self._lims[k]):
                if base[k][i] + lb[k][i] + extra[k][i] > lim * (1 + 1e-9):
                    return True
        return False

    # -- local repair ---------------------------------------------------------------
    def _system(self, state: SearchState) -> tuple:
        """The graph's constraints and cost terms indexed by symbol (cached on the state):
        ``(symbol -> [(kind, monomial)], (symbol -> cost terms) per cost kind)``."""
        hit = state.system
        if hit is None:
            c = state.graph.constraints
            index: dict = {}
            for kind, monos in (("integral", c.integral), ("equal", c.equal), ("volume", c.volume)):
                for m in monos:
                    for s in m.free_symbols():
                        index.setdefault(s, []).append((kind, m))
            costs = []
            for poly in (c.flops, c.params, c.latency)[: self.n_kinds]:
                by_symbol: dict = {}
                for m in poly_terms(poly):
                    for s in m.free_symbols():
                        by_symbol.setdefault(s, []).append(m)
                costs.append(by_symbol)
            hit = (index, tuple(costs))
            state.system = hit
        return hit

    def _repair(self, state: SearchState, pr: Prepared, w: dict, new_syms: list, has_c: bool, domains: dict,
                pending: tuple = ()) -> dict | None:
        """Re-choose one size (new sizes start at their smallest) until every
        constraint holds; the cheapest such witness, or None.

        The sizes the action touches are tried first; then every other size, since
        making room in the budget elsewhere is what CP-SAT found in most of the
        cases the first pass missed (a single other size changed in ~3 of 4 of
        them, in random rollouts at ResNet-18's placements)."""
        index, cost_by = self._system(state)
        inf = pr.inf
        touched = set(new_syms)
        for m in pr.integral + pr.equal + tuple(inf.flops) + tuple(inf.params) + tuple(inf.latency):
            touched.update(m.free_symbols())
        others = sorted(set(state.graph.free_symbols) - touched)
        if not touched and not others:
            return None
        num = self.num
        lims = self._lims
        k_all = range(self.n_kinds)
        checks = {"integral": num.integral, "equal": num.equal_one, "volume": num.volume_ok}
        effect = pr.costs[: self.n_kinds]
        if pending:  # the finishing step's latency moves with the sizes too: count it as the action's
            effect = effect[:2] + (effect[2] + tuple(pending),)
        effect = [num.compile_poly(terms) for terms in effect]
        # costs are updated, not recomputed: the state's costs under the witness,
        # minus its terms in the size being re-chosen, plus those terms re-valued
        fixed = [[a + b for a, b in zip(base, x, strict=False)] for base, x in zip(state.witness_costs, self._extra(has_c), strict=False)]
        start = {**w, **{s: domains[s][0] for s in new_syms}}
        best = None
        for s in sorted(touched) + [None] + others:
            if s is None:  # the action's own sizes are done
                if best is not None:
                    break
                continue
            own = [num.compile_poly(cost_by[k].get(s, ())) for k in k_all]
            was = [num.compiled_float(own[k], start) for k in k_all]
            for choice in domains[s]:
                w2 = {**start, s: choice}
                # the budget first (floats, a few terms): it is what usually fails
                totals = [[a - b + c + d for a, b, c, d in zip(fixed[k], was[k], num.compiled_float(own[k], w2),
                                                                num.compiled_float(effect[k], w2), strict=False)]
                          for k in k_all]
                if any(v > lim * (1 - 1e-9) for k in k_all for v, lim in zip(totals[k], lims[k], strict=False)):
                    continue
                util = sum(sum(v / lim for v, lim in zip(totals[k], lims[k], strict=False)) for k in k_all) if self.n_kinds > 2 else \
                    sum(a / lf + b / lp for a, b, lf, lp in zip(totals[0], totals[1], lims[0], lims[1], strict=False))
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
