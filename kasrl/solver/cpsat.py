"""The CP-SAT model of a kernel's sizes.

Each free size ``x`` is ``C * 2**e`` (a ratio; ``t = 1``) or ``2**e`` (a
constant; ``t = 0``), the same at every placement. For a monomial with free part
``prod x_i**n_i`` and static part ``K_p`` at placement ``p`` the value is::

    K_p * C_p**A * 2**L      with  A = sum n_i t_i,  L = sum n_i e_i

``A`` and ``L`` are linear in the model's variables and have small ranges. For
each distinct free part the model keeps a one-hot over the pairs ``(A, L)``,
channelled to the variables. Every per-monomial condition (integral, equal to
1, within the tensor cap) then only forbids some pairs, and every cost term is
linear in the one-hot, so the budget and the objective are linear too. (An
element-constraint formulation was 100x slower to presolve.)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from kasrl.ir.dims import C_ID, H_ID, W_ID, Monomial
from kasrl.ir.sizes import SizeChoice
from kasrl.solver.budget import SizeDomain

__all__ = ["SolverConfig", "SizeProblem", "solve_sizes"]

_SCALE = 10**9  # objective weights: utilisation in parts per billion
_TIE = 1 << 16  # weight of the primary objective over the seeded tie-break


@dataclass(frozen=True)
class SolverConfig:
    """CP-SAT settings.

    Attributes:
        domain: the values a free size may take.
        num_workers: CP-SAT search workers (1 gives run-to-run determinism).
        seed: CP-SAT ``random_seed`` and the seed of the tie-break objective.
        time_limit: seconds per solve (a safety net; a solve that hits it is
            reported as infeasible, so keep it well above typical solve times).
        gap: relative optimality gap at which maximising utilisation stops
            (1e-3: within 0.1% of the best possible). Proving exact optimality
            took up to 1 s on 6-size kernels; this stays deterministic because
            it depends on the search, not on the clock.
    """

    domain: SizeDomain = field(default_factory=SizeDomain)
    num_workers: int = 1
    seed: int = 0
    time_limit: float = 10.0
    gap: float = 1e-3


@dataclass
class SizeProblem:
    """Everything the model needs, independent of how it was collected.

    Attributes:
        symbols: free symbol ids to choose.
        integral, equal, volume: monomials (see :class:`kasrl.ir.graph.Constraints`).
        flops, params: cost terms (sums of monomials).
        placements, limits: where the kernel is used and the budget there.
        latency: predicted-latency terms (budgeted when the limits have a latency).
    """

    symbols: tuple
    integral: tuple
    equal: tuple
    volume: tuple
    flops: tuple
    params: tuple
    placements: tuple
    limits: tuple
    latency: tuple = ()

    @property
    def has_latency(self) -> bool:
        """True when latency is budgeted (the limits carry one)."""
        return bool(self.limits) and self.limits[0].latency is not None


def _pairs(free: tuple, domains: dict) -> list:
    """Achievable ``(A, L)`` pairs of a free part, sorted."""
    pairs = {(0, 0)}
    for s, n in free:
        pairs = {(a + n * int(t), ell + n * e) for a, ell in pairs for t, e in domains[s]}
    return sorted(pairs)


def _choice_values(choice: tuple, placements: tuple) -> list:
    return [float(p.c) ** int(choice[0]) * 2.0 ** choice[1] for p in placements]


def prune_domains(prob: SizeProblem, domain: SizeDomain, only: set) -> dict | None:
    """Per-symbol choices that can still be part of a solution, or None if none can.

    Exact filtering by every constraint on a single free size, then bound
    propagation on the budget sums: a choice goes when, with every other size
    at its cheapest, the sum already breaks the limit (with a 1e-9 relative
    margin, so float rounding never removes a feasible choice).
    """
    from kasrl.solver.numeric import NumericModel

    num = NumericModel.shared(prob.placements, prob.limits)
    doms = {s: domain.choices() for s in prob.symbols}
    checks = []
    if "integral" in only:
        checks.append((prob.integral, num.integral))
    if "equal" in only:
        checks.append((prob.equal, num.equal_one))
    if "volume" in only:
        checks.append((prob.volume, num.volume_ok))
    for monos, ok in checks:
        for m in monos:
            free = m.free_symbols()
            if len(free) == 1:
                s = free[0]
                doms[s] = [c for c in doms[s] if ok(m, {s: c})]
                if not doms[s]:
                    return None
            elif not free and not ok(m, {}):
                return None
    sums = []
    if "flops" in only:
        sums.append((prob.flops, [lim.flops for lim in prob.limits]))
    if "params" in only:
        sums.append((prob.params, [lim.params for lim in prob.limits]))
    if "latency" in only and prob.has_latency:
        sums.append((prob.latency, [lim.latency for lim in prob.limits]))
    vals = {c: _choice_values(c, prob.placements) for c in domain.choices()}
    # each sum as groups of terms with one free part (see NumericModel.compile_poly), and which groups each size is in
    sums = [(groups, {s: [j for j, (free, _) in enumerate(groups) if any(x == s for x, _ in free)] for s in prob.symbols}, limits)
            for groups, limits in ((num.compile_poly(tuple(terms)), limits) for terms, limits in sums)]
    for _ in range(4):
        changed = False
        lo = {s: [min(vals[c][i] for c in d) for i in range(len(prob.placements))] for s, d in doms.items()}
        hi = {s: [max(vals[c][i] for c in d) for i in range(len(prob.placements))] for s, d in doms.items()}
        for groups, by_symbol, limits in sums:
            for i, limit in enumerate(limits):
                def term_lb(free, k, fixed=None, i=i, lo=lo, hi=hi):
                    v = k
                    for s, n in free:
                        if fixed is not None and s == fixed[0]:
                            v *= vals[fixed[1]][i] ** n
                        else:
                            v *= (lo[s][i] if n > 0 else hi[s][i]) ** n
                    return v
                lbs = [term_lb(free, ks[i]) for free, ks in groups]
                total = sum(lbs)
                if total > limit * (1 + 1e-9):
                    return None
                for s, rel in by_symbol.items():
                    if not rel:
                        continue
                    rest = total - sum(lbs[j] for j in rel)
                    cap = limit * (1 + 1e-9)
                    kept = [c for c in doms[s] if rest + sum(term_lb(groups[j][0], groups[j][1][i], (s, c)) for j in rel) <= cap]
                    if len(kept) < len(doms[s]):
                        if not kept:
                            return None
                        doms[s] = kept
                        changed = True
        if not changed:
            break
    return doms


_TABLES: dict = {}


def _value_table(m: Monomial, pairs: tuple, placements: tuple) -> list:
    """``[[(num, den) per placement] per pair]``: exact values of ``m`` (cached)."""
    key = (m, pairs, placements)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    static = m.static_part()
    ks = []
    for p in placements:
        k = static.evaluate({C_ID: p.c, H_ID: p.h, W_ID: p.w})
        ks.append((k.numerator, k.denominator, p.c))
    hit = []
    for alpha, ell in pairs:
        vals = []
        for kn, kd, c in ks:
            n, d = kn, kd
            if alpha > 0:
                n *= c**alpha
            elif alpha < 0:
                d *= c ** (-alpha)
            if ell > 0:
                n <<= ell
            elif ell < 0:
                d <<= -ell
            vals.append((n, d))
        hit.append(vals)
    if len(_TABLES) > 50_000:
        _TABLES.clear()
    _TABLES[key] = hit
    return hit


class _Builder:
    """Builds one CP-SAT model from a :class:`SizeProblem`.

    Each symbol has a one-hot over its legal choices (shared by every monomial
    whose free part is that symbol alone); a free part with several symbols
    gets a one-hot over its achievable ``(A, L)`` pairs, channelled to the
    symbols' ``t`` and ``e`` variables.
    """

    def __init__(self, prob: SizeProblem, domain: SizeDomain, domains: dict) -> None:
        self.prob = prob
        self.model = cp_model.CpModel()
        self.domains = domains
        self.t = {}
        self.e = {}
        self.z = {}
        lo = min(domain.ratio_exps[0], domain.const_exps[0])
        hi = max(domain.ratio_exps[1], domain.const_exps[1])
        for s in prob.symbols:
            choices = domains[s]
            z = [self.model.new_bool_var("") for _ in choices]
            self.model.add_exactly_one(z)
            t = self.model.new_bool_var(f"t{s}")
            e = self.model.new_int_var(lo, hi, f"e{s}")
            self.model.add(t == sum(zi for zi, (r, _) in zip(z, choices, strict=False) if r))
            self.model.add(e == sum(x * zi for zi, (_, x) in zip(z, choices, strict=False)))
            self.t[s], self.e[s], self.z[s] = t, e, z
        self._parts: dict = {}

    def onehot(self, free: tuple) -> tuple:
        """``(pairs, literals)`` of a free part (cached); literal True for a static part."""
        hit = self._parts.get(free)
        if hit is not None:
            return hit
        if not free:
            hit = (((0, 0),), (True,))
        elif len(free) == 1:
            (s, n), = free
            pairs = tuple((n * int(t), n * e) for t, e in self.domains[s])
            hit = (pairs, tuple(self.z[s]))
        else:
            pairs = tuple(_pairs(free, self.domains))
            m = self.model
            lits = tuple(m.new_bool_var("") for _ in pairs)
            m.add_exactly_one(lits)
            m.add(sum(n * self.t[s] for s, n in free) == sum(a * z for (a, _), z in zip(pairs, lits, strict=False)))
            m.add(sum(n * self.e[s] for s, n in free) == sum(ell * z for (_, ell), z in zip(pairs, lits, strict=False)))
            hit = (pairs, lits)
        self._parts[free] = hit
        return hit

    def values(self, m: Monomial) -> list:
        """``[(literal, [(num, den) at each placement]), ...]`` for monomial ``m``."""
        pairs, lits = self.onehot(m.free_part())
        return list(zip(lits, _value_table(m, pairs, self.prob.placements), strict=False))

    def forbid_unless(self, m: Monomial, ok) -> None:
        """Forbid every (A, L) pair at which ``ok(num, den, placement index)`` fails somewhere."""
        for lit, vals in self.values(m):
            if not all(ok(n, d, i) for i, (n, d) in enumerate(vals)):
                if lit is True:
                    self.model.add_bool_or([])  # a static monomial that fails: infeasible
                else:
                    self.model.add(lit == 0)

    def integral(self, m: Monomial) -> None:
        self.forbid_unless(m, lambda n, d, i: n % d == 0)

    def equal(self, m: Monomial) -> None:
        self.forbid_unless(m, lambda n, d, i: n == d)

    def volume(self, m: Monomial) -> None:
        lims = self.prob.limits
        self.forbid_unless(m, lambda n, d, i: n <= lims[i].volume * d)

    def cost(self, terms: Sequence[Monomial], which: str) -> list:
        """Per placement: a linear expression of the cost (values clamped above the budget)."""
        caps = [2 * getattr(lim, which) + 1 for lim in self.prob.limits]
        consts = [0] * len(caps)
        coefs: list = [{} for _ in caps]  # per placement: literal index -> summed coefficient (terms share literals)
        lits: dict = {}
        for term in terms:
            for lit, vals in self.values(term):
                if lit is not True:
                    lits[lit.index] = lit
                for i, (n, d) in enumerate(vals):
                    c = min(-(-n // d), caps[i])
                    if lit is True:
                        consts[i] += c
                    else:
                        coefs[i][lit.index] = coefs[i].get(lit.index, 0) + c
        return [cp_model.LinearExpr.weighted_sum([lits[j] for j in cs], list(cs.values())) + k
                for cs, k in zip(coefs, consts, strict=True)]


def _status_ok(status: int) -> bool:
    return status in (cp_model.OPTIMAL, cp_model.FEASIBLE)


ALL_CONSTRAINTS = ("integral", "equal", "volume", "flops", "params", "latency")


def solve_sizes(
    prob: SizeProblem,
    config: SolverConfig,
    objective: str = "max_flops",
    tie_break: bool = True,
    only: Iterable[str] = ALL_CONSTRAINTS,
) -> tuple:
    """Choose every free size with CP-SAT.

    Args:
        prob: the constraints and placements.
        config: CP-SAT settings (workers, seed, time limit, size domain).
        objective: ``"max_flops"`` (use the FLOPs budget as fully as allowed,
            summed utilisation over placements), ``"max_capacity"`` (the most
            parameters, then the most FLOPs, within every budget: with a latency
            budget, the largest kernel whose predicted latency fits),
            ``"min_cost"`` (the cheapest sizes; the oracle's witness) or ``"feasible"``.
        tie_break: among optimal solutions, pick one by a second objective
            drawn from ``config.seed`` (so the same seed gives the same sizes).
        only: which constraint groups to include (used to diagnose).

    Returns:
        ``(assignment, objective_value)``: symbol id -> :class:`SizeChoice`, or
        ``(None, None)`` when no sizes satisfy the constraints (or the time
        limit ran out first).
    """
    only = set(only)
    domains = prune_domains(prob, config.domain, only)
    if domains is None:
        return None, None
    b = _Builder(prob, config.domain, domains)
    if "integral" in only:
        for m in prob.integral:
            b.integral(m)
    if "equal" in only:
        for m in prob.equal:
            b.equal(m)
    if "volume" in only:
        for m in prob.volume:
            b.volume(m)
    flops = b.cost(prob.flops, "flops")
    params = b.cost(prob.params, "params")
    if "flops" in only:
        for expr, lim in zip(flops, prob.limits, strict=False):
            b.model.add(expr <= lim.flops)
    if "params" in only:
        for expr, lim in zip(params, prob.limits, strict=False):
            b.model.add(expr <= lim.params)
    if "latency" in only and prob.has_latency:
        for expr, lim in zip(b.cost(prob.latency, "latency"), prob.limits, strict=False):
            b.model.add(expr <= lim.latency)
    goal = 0
    if objective == "max_capacity":  # the most parameters first: fix that, then the most FLOPs below
        use_params = -sum(expr * max(1, _SCALE // max(1, lim.params)) for expr, lim in zip(params, prob.limits, strict=False))
        best = _optimise(b.model, use_params, config)
        if best is None:
            return None, None
        b.model.add(use_params <= best)
        objective = "max_flops"
    if objective == "max_flops":
        goal = -sum(expr * max(1, _SCALE // max(1, lim.flops)) for expr, lim in zip(flops, prob.limits, strict=False))
    elif objective == "min_cost":
        goal = sum(expr * max(1, _SCALE // max(1, lim.flops)) for expr, lim in zip(flops, prob.limits, strict=False))
        goal += sum(expr * max(1, _SCALE // max(1, lim.params)) for expr, lim in zip(params, prob.limits, strict=False))
    if objective != "feasible":
        if tie_break and prob.symbols:
            # lexicographic: the primary objective first, then a seeded preference
            # among equally good solutions (|secondary| < _TIE, so it never wins)
            rng = random.Random(config.seed)
            secondary = sum(rng.randint(-16, 16) * b.e[s] + rng.randint(-16, 16) * b.t[s] for s in prob.symbols)
            b.model.minimize(goal * _TIE + secondary)
        else:
            b.model.minimize(goal)
    solver = _solver(config, objective == "max_flops")
    status = solver.solve(b.model)
    if not _status_ok(status):
        return None, None
    out = {s: SizeChoice(bool(solver.value(b.t[s])), int(solver.value(b.e[s]))) for s in prob.symbols}
    value = solver.value(goal) if objective != "feasible" else 0
    return out, (-value if objective == "max_flops" else value)


def _solver(config: SolverConfig, gap: bool) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = config.num_workers
    solver.parameters.random_seed = config.seed
    solver.parameters.max_time_in_seconds = config.time_limit
    if gap:
        solver.parameters.relative_gap_limit = config.gap
    return solver


def _optimise(model: cp_model.CpModel, goal, config: SolverConfig) -> int | None:
    """Minimise ``goal`` on ``model`` (within the configured gap); its best value, or None when infeasible."""
    model.minimize(goal)
    solver = _solver(config, True)
    if not _status_ok(solver.solve(model)):
        return None
    return int(solver.objective_value)
