"""Finish-time size solving: legal sizes at every placement, budget used to the full.

>>> from kasrl.ir.graph import KernelGraph
>>> from kasrl.ir.primitives import Projection, Conv
>>> g = KernelGraph()
>>> _ = g.apply(Projection(out="new", grouped=False), (0,))
>>> _ = g.apply(Conv(kh=3, kw=3, dilation=1, out="depthwise"), (0,))
>>> _ = g.apply(Projection(out="C", grouped=False), (0,))
>>> solver = SizeSolver(RESNET18_PLACEMENTS, Budget(flops=0.5))
>>> str(solver.solve(g)[3])   # the bottleneck width x0: the largest that fits
'C*2'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kasrl.errors import SolverInfeasible
from kasrl.ir.dims import Monomial, symbol_name
from kasrl.ir.graph import Constraints, KernelGraph, poly_terms
from kasrl.ir.sizes import evaluate
from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, Placement, check_placements, conv3x3_flops, conv3x3_params
from kasrl.solver.cpsat import ALL_CONSTRAINTS, SizeProblem, SolverConfig, solve_sizes

__all__ = ["SizeSolver", "solved_value", "RESNET18_PLACEMENTS", "Budget"]


class SizeSolver:
    """Chooses free sizes with CP-SAT for a fixed list of placements and a budget.

    Args:
        placements: every ``(C, H, W)`` the kernel is used at.
        budget: FLOPs, parameters, tensor cap and predicted latency per placement.
        config: CP-SAT settings (``num_workers``, ``seed``, time limit, domain).
        latency: the latency model that ``budget.latency`` is measured with
            (its ``conv3x3_units``); graphs must be built in a context that has
            the same model, so their constraints carry latency terms.
    """

    def __init__(self, placements: Sequence[Placement], budget: Budget | None = None, config: SolverConfig | None = None,
                 latency=None) -> None:
        self.placements = check_placements(placements)
        self.budget = budget or Budget()
        self.config = config or SolverConfig()
        self.latency = latency if self.budget.latency is not None else None
        self.limits = tuple(self.budget.limits(p, latency.conv3x3_units(p) if latency is not None else None) for p in self.placements)
        for p, lim in zip(self.placements, self.limits, strict=False):
            if lim.volume < p.c * p.h * p.w:
                raise SolverInfeasible(
                    f"`budget.max_tensor` caps tensors at {lim.volume} elements, below the input itself at {p} ({p.c * p.h * p.w})",
                    tuple(p),
                    "memory",
                )

    def problem(
        self,
        constraints: Constraints,
        symbols: Iterable[int],
        extra_flops: Iterable[Monomial] = (),
        extra_params: Iterable[Monomial] = (),
        placements: Sequence[int] | None = None,
        extra_latency: Iterable[Monomial] = (),
    ) -> SizeProblem:
        """The CP-SAT problem for ``constraints`` plus extra cost terms (optionally at a subset of placements)."""
        idx = range(len(self.placements)) if placements is None else placements
        return SizeProblem(
            tuple(symbols),
            tuple(sorted(constraints.integral)),
            tuple(sorted(constraints.equal)),
            tuple(sorted(constraints.volume)),
            poly_terms(constraints.flops) + tuple(extra_flops),
            poly_terms(constraints.params) + tuple(extra_params),
            tuple(self.placements[i] for i in idx),
            tuple(self.limits[i] for i in idx),
            poly_terms(constraints.latency) + tuple(extra_latency),
        )

    def solve(self, graph: KernelGraph, objective: str = "max_flops") -> dict:
        """Solve a finished kernel's sizes and store them in ``graph.sizes``.

        Returns:
            symbol id -> :class:`~kasrl.ir.sizes.SizeChoice`.

        Raises:
            SolverInfeasible: naming the placement and the constraint that fails.
        """
        sizes, _ = solve_sizes(self.problem(graph.constraints, graph.free_symbols), self.config, objective,
                               tie_break=objective != "feasible")
        if sizes is None:
            raise self.diagnose(graph.constraints, graph.free_symbols)
        graph.sizes = sizes
        return sizes

    # -- diagnosis -----------------------------------------------------------
    def _feasible(self, constraints: Constraints, symbols: tuple, only: tuple, placements: Sequence[int]) -> bool:
        sizes, _ = solve_sizes(self.problem(constraints, symbols, placements=placements), self.config, "feasible", False, only)
        return sizes is not None

    def _min_ratio(self, constraints: Constraints, symbols: tuple, which: str, i: int) -> float:
        """The least FLOPs (or params) this kernel needs at placement ``i``, relative to a 3x3 conv."""
        prob = self.problem(constraints, symbols, placements=[i])
        big = prob.limits[0]._replace(flops=10**18, params=10**18)
        prob.limits = (big,)
        if which == "params":  # minimise params by swapping the cost lists
            prob.flops, prob.params = prob.params, prob.flops
        sizes, _ = solve_sizes(prob, self.config, "min_cost", False, ("integral", "equal", "volume"))
        if sizes is None:
            return float("nan")
        terms = prob.flops
        p = self.placements[i]
        need = sum(evaluate(m, sizes, p.c, p.h, p.w) for m in terms)
        ref = conv3x3_flops(p) if which == "flops" else conv3x3_params(p)
        return float(need) / ref

    def diagnose(self, constraints: Constraints, symbols: tuple) -> SolverInfeasible:
        """Explain why no sizes exist: the first placement and constraint that fail alone,
        or the pair of placements that cannot share one choice of sizes."""
        symbols = tuple(symbols)
        stages = (
            (("integral",), "integrality", "no choice of free sizes makes every dimension a positive integer"),
            (("integral", "equal"), "equality", "the sizes this kernel identifies cannot be equal"),
            (("integral", "equal", "volume"), "memory", None),
            (("integral", "equal", "volume", "flops"), "flops", None),
            (("integral", "equal", "volume", "flops", "params"), "params", None),
            (ALL_CONSTRAINTS, "latency", None),
        )
        for i, p in enumerate(self.placements):
            for only, name, text in stages:
                if self._feasible(constraints, symbols, only, [i]):
                    continue
                if name == "memory":
                    cap = self.limits[i].volume
                    text = (f"an intermediate tensor exceeds the cap of {cap} elements ({self.budget.max_tensor:g}x C*H*W) "
                            "whatever the sizes")
                elif name == "flops":
                    need = self._min_ratio(constraints, symbols, "flops", i)
                    text = f"budget {self.budget.describe_flops()} is below the minimum this kernel needs ({need:.3g}x conv FLOPs)"
                elif name == "params":
                    need = self._min_ratio(constraints, symbols, "params", i)
                    text = f"budget {self.budget.describe_params()} is below the minimum this kernel needs ({need:.3g}x conv params)"
                elif name == "latency":
                    text = (f"budget {self.budget.latency:g}x the conv's predicted latency is below what this kernel needs "
                            "whatever the sizes")
                return SolverInfeasible(f"{text} at {p}", tuple(p), name)
        for i in range(len(self.placements)):
            for j in range(i + 1, len(self.placements)):
                if not self._feasible(constraints, symbols, ALL_CONSTRAINTS, [i, j]):
                    a, b = self.placements[i], self.placements[j]
                    return SolverInfeasible(
                        f"contradictory placements: no single choice of sizes works at both {a} and {b} "
                        "(a free size is the same ratio of C, or the same constant, at every placement)",
                        None,
                        "placements",
                    )
        return SolverInfeasible(
            "contradictory placements: no single choice of sizes works at all of " + ", ".join(str(p) for p in self.placements),
            None,
            "placements",
        )

    def sizes_at(self, sizes: dict, p: Placement) -> dict:
        """Symbol name -> integer value at placement ``p`` (for display)."""
        return {symbol_name(s): choice.value(p.c) for s, choice in sizes.items()}


def solved_value(m: Monomial, sizes: dict, p: Placement) -> int:
    """Integer value of a monomial at a placement under solved sizes."""
    v = evaluate(m, sizes, p.c, p.h, p.w)
    return int(v)

