"""The search space: one object that answers every question about legality.

The environment, the random sampler and the DEAP decoder all go through a
:class:`SearchSpace`; nobody re-implements legality.

A state is a :class:`~kasrl.space.state.SearchState`: the partial kernel graph
and the caches the space and the completability oracle keep about it.

>>> space = SearchSpace(RESNET18_PLACEMENTS)
>>> s = space.reset()
>>> s = space.apply(s, space.index("unfold", 0, axes="HW", k=3, dilation=1))
>>> s = space.apply(s, space.index("projection", 0, out="C", grouped=False))
>>> kernel = space.finish(s)
>>> kernel.is_finished, kernel.n_primitives
(True, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kasrl.errors import IllegalAction
from kasrl.ir.dims import ONE, PLACEHOLDER, PLACEHOLDER_INDEX, C, free_symbol
from kasrl.ir.graph import KernelGraph, infer
from kasrl.ir.primitives import PRIMITIVES, Binary, Fold, Projection, SpaceContext
from kasrl.ir.shape import C_SLOT, G_SLOT, H_SLOT, KH_SLOT, KW_SLOT, SLOTS, W_SLOT
from kasrl.ir.sizes import SizeChoice
from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, Placement
from kasrl.solver.cpsat import SolverConfig, solve_sizes
from kasrl.solver.oracle import CompletionOracle, Prepared
from kasrl.solver.solve import SizeSolver
from kasrl.space.config import Action, ActionTable, SpaceConfig
from kasrl.space.rules import redundant_after
from kasrl.space.state import SearchState

__all__ = ["SearchSpace", "SearchState", "RESNET18_PLACEMENTS", "SIZE_OBJECTIVES"]

#: How the finishing step may choose sizes (see :meth:`SearchSpace.finish`).
SIZE_OBJECTIVES = ("fill", "max_flops", "max_capacity", "feasible")

_ADD = Binary(op="add")


def _renamed(d: dict, mapping: dict) -> dict:
    return {mapping.get(k, k): v for k, v in d.items()}


class SearchSpace:
    """Legal actions, their application and the finishing step, for one set of placements.

    Args:
        placements: every ``(C, H, W)`` the kernel will be used at.
        budget: FLOPs / parameter / tensor-size budget per placement.
        config: the primitive library and kernel limits.
        solver_config: CP-SAT settings (seed, workers, time limit, size domain).
        latency: the latency model ``budget.latency`` is measured with (see
            :mod:`kasrl.latency`); unused when latency is not budgeted.

    A state is a :class:`~kasrl.space.state.SearchState`. Masks are exact: every
    action :meth:`action_mask` allows leads to a state that can still be
    finished legally within budget (see :mod:`kasrl.solver.oracle`, where the
    mask's decision is made).
    """

    def __init__(
        self,
        placements: Sequence[Placement] = RESNET18_PLACEMENTS,
        budget: Budget | None = None,
        config: SpaceConfig | None = None,
        solver_config: SolverConfig | None = None,
        latency=None,
    ) -> None:
        self.config = config or SpaceConfig()
        self.solver = SizeSolver(placements, budget, solver_config, latency)
        self.oracle = CompletionOracle(self.solver)
        self.table = ActionTable(self.config)
        self.ctx = SpaceContext(allow_spatial_weights=self.config.allow_spatial_weights, latency=self.solver.latency)
        self._applicable_cache: dict = {}
        self._groups_cache: dict = {}
        self._fork_cache: dict = {}
        self._redundant_cache: dict = {}
        self._binary_ops = np.array([t for t, prim in enumerate(self.table.binary) if prim.family == "binary"], dtype=np.int64)
        self._initial: SearchState | None = None

    @property
    def placements(self) -> tuple:
        """The placements every kernel must be legal at."""
        return self.solver.placements

    @property
    def budget(self) -> Budget:
        """The budget every kernel must fit."""
        return self.solver.budget

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return len(self.table)

    def index(self, name: str, *operands: int, **attrs) -> int:
        """Action index of primitive ``name`` (or ``"finish"``/``"fork"``) with ``attrs`` on ``operands``.

        Raises:
            KeyError: when no such action is in the table.
        """
        if name in ("finish", "fork"):
            act = Action(name, None, tuple(operands))
        else:
            prim = PRIMITIVES[name](**attrs)
            act = Action("binary" if prim.arity == 2 else "unary", prim, tuple(operands))
        return self.table.index[act]

    # -- states ---------------------------------------------------------------
    def reset(self) -> SearchState:
        """The initial state: the input tensor alone.

        Every episode starts here, so its mask and oracle caches are computed
        once and shared by the copies (they describe the same state)."""
        if self._initial is None:
            s = SearchState(KernelGraph(self.ctx))
            self.oracle.set_witness(s, {})
            self.action_mask(s)
            self._initial = s
        s = SearchState(self._initial.graph.copy())
        s.share_caches(self._initial)
        return s

    def state(self, graph: KernelGraph) -> SearchState:
        """A state for a graph built some other way (by hand, loaded, copied); its caches are computed on demand."""
        return SearchState(graph)

    def _applicable(self, shapes: tuple) -> tuple:
        """The templates that apply to ``shapes`` (one shape: unary; two: binary),
        grouped by effect, cached per shapes.

        Returns ``(trivial, groups)``: template indices whose action keeps the
        shape and adds nothing (always completable), and ``[(Prepared,
        commutative indices, non-commutative indices)]``. A new free size is the
        placeholder symbol, renamed when the action is applied.
        """
        hit = self._applicable_cache.get(shapes)
        if hit is None:
            unary = len(shapes) == 1
            templates = self.table.unary if unary else self.table.binary
            trivial = []
            groups: dict = {}
            for t_idx, prim in enumerate(templates):
                inf = infer(prim, shapes, PLACEHOLDER_INDEX, self.ctx)
                if inf is None:
                    continue
                pr = Prepared(inf, shapes[0] if unary else None, PLACEHOLDER)
                if pr.trivial:
                    trivial.append(t_idx)
                    continue
                entry = groups.setdefault(pr.eid, (pr, [], []))
                entry[1 if prim.commutative else 2].append(t_idx)
            by_template = {t: pr for pr, c, n in groups.values() for t in c + n}
            by_template.update({t: None for t in trivial})  # trivial: applies, nothing to check
            hit = (
                np.array(trivial, dtype=np.int64),
                [(pr, np.array(c, dtype=np.int64), np.array(n, dtype=np.int64)) for pr, c, n in groups.values()],
                by_template,
            )
            if len(self._applicable_cache) > 100_000:
                self._applicable_cache.clear()
            self._applicable_cache[shapes] = hit
        return hit

    def _fork(self, shape) -> Prepared:
        """The effect of forking a branch of ``shape`` (cached per shape; checked only with latency budgeted)."""
        hit = self._fork_cache.get(shape)
        if hit is None:
            hit = self._fork_cache[shape] = Prepared.fork(shape)
        return hit

    def _groups_at(self, shapes: tuple, position: int) -> tuple:
        """:meth:`_applicable` with action indices: ``(trivial action indices,
        [(Prepared, successor key, action indices, operand branches)])`` for the
        branch (unary) or the branch pair (binary) at ``position`` (cached)."""
        key = (shapes, position)
        hit = self._groups_cache.get(key)
        if hit is not None:
            return hit
        trivial, groups, _ = self._applicable(shapes)
        table = self.table
        if len(shapes) == 1:
            stride, base, ops = self.config.max_width, table.unary_offset + position, position
            hit = (base + trivial * stride, [(pr, (ops, pr.eid), base + np.concatenate((c, n)) * stride, (ops,)) for pr, c, n in groups])
        else:
            stride, base, ops = len(table.pairs), table.binary_offset + position, table.pairs[position]
            out = []
            for pr, c, n in groups:
                idx = n if ops[0] > ops[1] else np.concatenate((c, n))
                if len(idx):  # else commutative ops only: the other order is the same kernel
                    out.append((pr, (ops, pr.eid), base + idx * stride, ops))
            hit = (trivial[:0], out)
        if len(self._groups_cache) > 200_000:
            self._groups_cache.clear()
        self._groups_cache[key] = hit
        return hit

    def action_mask(self, state: SearchState) -> np.ndarray:
        """``int8`` mask over the action table: 1 where the action is legal.

        Never all zero for a state reached through legal actions: finishing is
        legal from ``min_steps`` on, and an activation always is before. The
        array is cached on the state (a reset state's is shared by every
        episode): copy it before writing to it.

        The space lists the candidate effects (the constraints and costs an
        action adds) of the state's branches and branch pairs; the oracle decides
        each once per state (:meth:`CompletionOracle.decide`).
        """
        if state.mask is not None:
            return state.mask
        graph = state.graph
        mask = np.zeros(len(self.table), dtype=np.int8)
        succ: dict = {}
        cfg = self.config
        mask[0] = graph.steps >= cfg.min_steps
        if graph.steps < cfg.max_steps:
            width = graph.width
            shapes = [graph.branch_shape(i) for i in range(width)]
            candidates = []
            if width < cfg.max_width and "fork" in cfg.families:
                if self.oracle.latency is None:  # a copy costs nothing
                    mask[self.table.fork_offset : self.table.fork_offset + width] = 1
                else:  # a copy is one more branch for the finishing step to fold and add
                    offset = self.table.fork_offset
                    candidates.extend((self._fork(s), ("fork", i), np.array([offset + i]), ()) for i, s in enumerate(shapes))
            for i, s in enumerate(shapes):
                trivial, groups = self._groups_at((s,), i)
                mask[trivial] = 1
                candidates.extend(groups)
            if width >= 2:
                for p_idx, (i, j) in enumerate(self.table.pairs):
                    if i < width and j < width:
                        candidates.extend(self._groups_at((shapes[i], shapes[j]), p_idx)[1])
            legal = self.oracle.decide(state, shapes, candidates, succ)
            if legal:
                mask[np.concatenate(legal)] = 1
            redundant = self._redundant(graph)
            if redundant:
                mask[np.concatenate(redundant)] = 0
        if not mask.any():  # too early to finish, yet nothing else fits: finishing is the way out
            mask[0] = self.oracle.completable(state)
        state.mask = mask
        state.successors = succ
        return mask

    def _redundant(self, graph: KernelGraph) -> list:
        """Action indices :mod:`kasrl.space.rules` rejects in ``graph``: redundant
        successors of each branch's producer, binary ops on two copies of one tensor."""
        out = []
        stride = self.config.max_width
        for i, node_id in enumerate(graph.branches):
            prim = graph.nodes[node_id].prim
            if prim is None:
                continue
            templates = self._redundant_cache.get(prim)
            if templates is None:
                templates = np.array([t for t, nxt in enumerate(self.table.unary) if redundant_after(prim, nxt)], dtype=np.int64)
                self._redundant_cache[prim] = templates
            if len(templates):
                out.append(self.table.unary_offset + i + templates * stride)
        if graph.width >= 2 and len(self._binary_ops):
            pairs = self.table.pairs
            for p_idx, (i, j) in enumerate(pairs):
                if i < graph.width and j < graph.width and graph.branches[i] == graph.branches[j]:
                    out.append(self.table.binary_offset + p_idx + self._binary_ops * len(pairs))
        return out

    def _is_redundant(self, graph: KernelGraph, act: Action) -> bool:
        """:meth:`_redundant` for one action."""
        if act.kind == "unary":
            return redundant_after(graph.nodes[graph.branches[act.operands[0]]].prim, act.prim)
        if act.kind == "binary" and act.prim.family == "binary":
            i, j = act.operands
            return graph.branches[i] == graph.branches[j]
        return False

    def is_legal(self, state: SearchState, action: int) -> bool:
        """True when ``action`` is allowed in ``state`` (checks that one action only)."""
        return 0 <= action < len(self.table) and self._single(state, action)[0]

    def _single(self, state: SearchState, action: int) -> tuple:
        """``(legal, successor entry)`` of one action, without the whole mask (cached on the state).

        The entry is ``(Prepared, oracle result)``, or None for fork, finish and
        trivial actions (the witness carries over)."""
        if state.single is None:
            state.single = {}
        cache = state.single
        graph = state.graph
        hit = cache.get(action)
        if hit is not None:
            return hit
        act = self.table[action]
        cfg = self.config
        ops = act.operands
        out = (False, None)
        if act.kind == "finish":
            out = (self.can_finish(state), None)
        elif graph.steps >= cfg.max_steps or any(i >= graph.width for i in ops) or self._is_redundant(graph, act):
            out = (False, None)
        elif act.kind == "fork" and self.oracle.latency is None:
            out = (graph.width < cfg.max_width, None)
        elif act.kind == "fork":
            entry = None
            if graph.width < cfg.max_width:
                (i,) = ops
                pr = self._fork(graph.branch_shape(i))
                if state.mask is not None:
                    entry = state.successors.get(("fork", i))
                else:
                    res = self.oracle.verdict(state, pr, ())
                    entry = None if res is None else (pr, res)
            out = (entry is not None, entry)
        elif not (act.kind == "binary" and act.prim.commutative and ops[0] > ops[1]):
            shapes = tuple(graph.branch_shape(i) for i in ops)
            _, _, by_template = self._applicable(shapes)
            t_idx = self.table.template_index[act.prim]
            pr = by_template.get(t_idx)
            if t_idx not in by_template:
                out = (False, None)  # does not apply to these shapes
            elif pr is not None:
                key = (ops[0] if act.kind == "unary" else ops, pr.eid)
                if state.mask is not None:
                    entry = state.successors.get(key)
                else:
                    res = self.oracle.verdict(state, pr, ops)
                    entry = None if res is None else (pr, res)
                out = (entry is not None, entry)
            else:
                out = (True, None)
        cache[action] = out
        return out

    def apply(self, state: SearchState, action: int, in_place: bool = False) -> SearchState | KernelGraph:
        """The state after taking ``action`` (a new state unless ``in_place``).

        ``finish`` returns the finished, solved kernel (see :meth:`finish`).

        Raises:
            IllegalAction: when the action is masked in this state.
        """
        if not self.is_legal(state, action):
            inside = 0 <= action < len(self.table)
            label = self.table[action].label() if inside else str(action)
            reason = "masked in this state" if inside else f"out of range [0, {len(self.table)})"
            raise IllegalAction(f"action {action} ({label}) is {reason}; pass a legal action (see action_mask)")
        act = self.table[action]
        if act.kind == "finish":
            return self.finish(state)
        entry = self._single(state, action)[1]
        witness, costs, domains = state.witness, state.witness_costs, state.domains
        if entry is not None:
            succ = self.oracle.successor(state, *entry)
        rejected = state.rejected
        running_lb = self.oracle.advance_lb(state, None if entry is None else entry[0])
        if in_place:
            out = state
            out.clear()
        else:
            out = SearchState(state.graph.copy())
        out.rejected = rejected  # constraints only grow: what was rejected stays rejected
        out.lb_running = running_lb
        g = out.graph
        if entry is not None:
            witness, costs, domains = succ
        if act.kind == "fork":
            g.fork(act.operands[0])
        elif entry is None:  # same-shape zero-cost action: the witness carries over
            g.apply(act.prim, act.operands)
        else:
            pr = entry[0]
            new = {PLACEHOLDER: free_symbol(g.n_free)} if pr.new_syms else {}
            g.apply(act.prim, act.operands, inference=pr.inf.renamed(new))
            if new:
                witness = _renamed(witness, new)
                domains = _renamed(domains, new) if domains is not None else None
        self.oracle.set_witness(out, witness, costs, domains)
        return out

    def replay(self, actions: Sequence[int], finish: bool = True) -> SearchState | KernelGraph:
        """Apply a sequence of action indices from the initial state: the finished
        kernel (a solved graph), or with ``finish=False`` the state they reach
        (the kernel if they end with the finish action).

        Raises:
            IllegalAction: naming the first action that is not legal.
        """
        s = self.reset()
        for a in actions:
            s = self.apply(s, int(a), in_place=True)
            if isinstance(s, KernelGraph):
                return s
        return self.finish(s) if finish else s

    # -- finishing ----------------------------------------------------------
    def can_finish(self, state: SearchState) -> bool:
        """True when the finish action is legal: from ``min_steps`` actions on, or
        earlier when no other action is legal (a tight latency budget can leave a
        state with nothing left to add), and the state can be finished."""
        if state.steps < self.config.min_steps and self.action_mask(state)[1:].any():
            return False
        return self.oracle.completable(state)

    def finish(self, state: SearchState, objective: str = "fill") -> KernelGraph:
        """Close the kernel (folds and adds; a projection to C only when no
        branch has channel size C) and solve its sizes.

        Args:
            state: a state where finishing is legal.
            objective: ``"fill"`` (default): the sizes that fill the budget that
                decides speed: ``"max_capacity"`` with a latency budget (the most
                parameters, then FLOPs, whose predicted latency fits), else
                ``"max_flops"`` (the FLOPs budget used as fully as allowed);
                ``"feasible"``: the first legal sizes — the oracle's witness when it
                fits the closed kernel, else a CP-SAT feasibility solve (for
                throughput-bound sampling).

        Returns a new, finished graph with ``sizes`` set.

        Raises:
            IllegalAction: when finishing is not allowed in this state.
            SolverInfeasible: when CP-SAT runs out of time without a solution.
        """
        objective = self.resolve_objective(objective)
        if not self.can_finish(state):
            raise IllegalAction(f"cannot finish yet: {state.steps} actions taken, at least {self.config.min_steps} needed")
        witness = state.witness
        g = state.graph.copy()
        if self._close(g, objective, witness):
            return g
        if objective == "feasible" and self.oracle.satisfies(g, witness):
            g.sizes = {s: SizeChoice(*witness[s]) for s in g.free_symbols}
            return g
        self.solver.solve(g, objective)
        return g

    def resolve_objective(self, objective: str) -> str:
        """The size objective ``objective`` names (``"fill"``: by whether latency is budgeted).

        Raises:
            ValueError: for an unknown objective.
        """
        if objective not in SIZE_OBJECTIVES:
            raise ValueError(f"`objective` must be one of {', '.join(SIZE_OBJECTIVES)}, got {objective!r}")
        if objective == "fill":
            return "max_capacity" if self.oracle.latency is not None else "max_flops"
        return objective

    def _fold(self, g: KernelGraph, i: int, slot: int) -> None:
        g.apply(Fold(slot=SLOTS[slot], mode="mean"), (i,), closing=True)

    def _merge_all(self, g: KernelGraph) -> None:
        while g.width > 1:
            g.apply(_ADD, (0, g.width - 1), closing=True)

    def _close(self, g: KernelGraph, objective: str = "max_flops", witness: dict | None = None) -> bool:
        """Append the closing primitives; True when it also solved the sizes."""
        for i in range(g.width):
            for slot in (G_SLOT, KH_SLOT, KW_SLOT):
                if not g.branch_shape(i)[slot].is_one:
                    self._fold(g, i, slot)
        if any(g.branch_shape(i)[C_SLOT] == C for i in range(g.width)):
            for i in range(g.width):  # route a: keep the C-sized branches
                if g.branch_shape(i)[C_SLOT] not in (C, ONE):
                    self._fold(g, i, C_SLOT)
            self._merge_all(g)
            return False
        if self._close_with_projection(g, objective, witness):
            return True
        for i in range(g.width):  # route c, cheapest: a 1 -> C projection of a pooled copy
            if not g.branch_shape(i)[C_SLOT].is_one:
                self._fold(g, i, C_SLOT)
        self._merge_all(g)
        g.fork(0, closing=True)
        self._fold(g, 1, H_SLOT)
        self._fold(g, 1, W_SLOT)
        g.apply(Projection(out="C", grouped=False), (1,), closing=True)
        g.apply(_ADD, (0, 1), closing=True)
        return False

    def _close_with_projection(self, g: KernelGraph, objective: str = "max_flops", witness: dict | None = None) -> bool:
        """Route c, preferred form: merge the branches and project the result to C.

        Solves the sizes of that closing (for ``"feasible"``, ``witness`` is
        used when it fits, without CP-SAT); False (and ``g`` untouched) when it
        does not fit the budget."""
        trial = g.copy()
        keep = next((trial.branch_shape(i)[C_SLOT] for i in range(trial.width) if not trial.branch_shape(i)[C_SLOT].is_one), ONE)
        for i in range(trial.width):
            if trial.branch_shape(i)[C_SLOT] not in (keep, ONE):
                self._fold(trial, i, C_SLOT)
        self._merge_all(trial)
        trial.apply(Projection(out="C", grouped=False), (0,), closing=True)
        if objective == "feasible" and witness is not None and self.oracle.satisfies(trial, witness):
            trial.sizes = {s: SizeChoice(*witness[s]) for s in trial.free_symbols}
            g.__dict__.update(trial.__dict__)
            return True
        sizes, _ = solve_sizes(self.solver.problem(trial.constraints, trial.free_symbols), self.solver.config, objective)
        if sizes is None:
            return False
        trial.sizes = sizes
        g.__dict__.update(trial.__dict__)
        return True
