"""The kernel-construction environment: each action adds one primitive.

>>> import gymnasium as gym, envs
>>> env = gym.make("kasrl/KernelConstruction-v0", max_steps=6)
>>> obs, info = env.reset(seed=0)
>>> mask = info["action_mask"]
>>> bool(mask.any()) and int(obs["node_mask"].sum()) == 1
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kasrl.errors import IllegalAction, KasrlError, SolverInfeasible
from kasrl.eval.base import AnalyticEvaluator, EvalResult, Evaluator, failure
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.dims import C
from kasrl.ir.graph import KernelGraph
from kasrl.ir.serialize import to_document
from kasrl.ir.shape import C_SLOT
from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, Placement
from kasrl.solver.cpsat import SolverConfig
from kasrl.space import FAMILIES, SearchSpace, SearchState, SpaceConfig
from kasrl.space.space import SIZE_OBJECTIVES
from kasrl.store.records import Status

__all__ = ["KernelConstructionEnv", "MaskedDiscrete", "NODE_FEATURES"]

_FAMILY_INDEX = {f: i for i, f in enumerate(("input",) + tuple(f for f in FAMILIES if f != "fork"))}
_SLOT_FEATURES = 4  # per slot: absent, exactly C, has a free size, log2 of a fixed size / 4
NODE_FEATURES = len(_FAMILY_INDEX) + 6 * _SLOT_FEATURES + 5
#: Length of the ``budget`` observation.
BUDGET_FEATURES = 7


class MaskedDiscrete(spaces.Discrete):
    """A ``Discrete`` space whose ``sample()`` (without a mask) draws a legal action.

    The mask comes from the environment's current state, so
    ``env.action_space.sample()`` is always a legal move.
    """

    def __init__(self, n: int, mask_fn, seed: int | None = None) -> None:
        super().__init__(n, seed=seed)
        self._mask_fn = mask_fn

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        """A random legal action (the current mask unless one is given)."""
        if mask is None and probability is None:
            # the env's own mask needs none of the checks Discrete.sample runs on a
            # caller's mask; the same draw as Discrete.sample(mask)
            legal = np.flatnonzero(self._mask_fn())
            return self.start + self.dtype.type(self.np_random.choice(legal))
        return super().sample(mask=mask, probability=probability)


_TAIL = len(_FAMILY_INDEX) + 6 * _SLOT_FEATURES  # then: closing, new sizes, depth, fan-out, open branch


_FEATURES: dict = {}


def _node_features(node) -> np.ndarray:
    """The features a node keeps for life (family, per-slot shape, closing, new sizes);
    depth, fan-out and the open-branch flag are filled in per state. Cached by
    what they depend on (the same rows recur across episodes); read-only."""
    family = "input" if node.prim is None else node.prim.family
    key = (family, node.shape, node.closing, bool(node.symbols))
    hit = _FEATURES.get(key)
    if hit is None:
        if len(_FEATURES) > 100_000:
            _FEATURES.clear()
        hit = _FEATURES[key] = _compute_node_features(node, family)
    return hit


def _compute_node_features(node, family: str) -> np.ndarray:
    f = np.zeros(NODE_FEATURES, dtype=np.float32)
    f[_FAMILY_INDEX[family]] = 1.0
    base = len(_FAMILY_INDEX)
    for k, m in enumerate(node.shape):
        o = base + k * _SLOT_FEATURES
        if m.is_one:
            f[o] = 1.0
            continue
        f[o + 1] = float(m == C) if k == C_SLOT else 0.0
        f[o + 2] = float(bool(m.free_symbols()))
        static = m.static_part()
        value = static.num / static.den
        f[o + 3] = min(math.log2(max(value, 1.0)) / 4.0, 1.0)
    f[_TAIL] = float(node.closing)
    f[_TAIL + 1] = float(bool(node.symbols))
    return f


class _GraphObserver:
    """The node features, adjacency and node mask of a growing kernel, kept up to date incrementally.

    Along an episode a state only gains nodes, so an update computes the fixed
    features of the new nodes only and refreshes the per-state columns (depth,
    fan-out, open branch) of all rows at once. Any other graph (a new episode)
    is rebuilt from scratch. Returns copies: callers may keep observations.
    """

    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.reset()

    def reset(self) -> None:
        n = self.max_nodes
        self.n_seen = 0
        self.last = None  # the last node seen: nodes are only appended, each a new object
        self.depth: list = []
        self.max_depth = 0
        self.depth_col = np.zeros(n)
        self.users_col = np.zeros(n)
        self.nodes = np.zeros((n, NODE_FEATURES), dtype=np.float32)
        self.adjacency = np.zeros((n, n), dtype=np.float32)
        self.node_mask = np.zeros(n, dtype=np.float32)

    def update(self, g: KernelGraph) -> tuple:
        k = self.n_seen
        if len(g.nodes) < k or (k and g.nodes[k - 1] is not self.last):
            self.reset()
            k = 0
        n = self.max_nodes
        depth = self.depth
        for node in g.nodes[k:]:
            d = 1 + max(depth[i] for i in node.inputs) if node.inputs else 0
            depth.append(d)
            self.max_depth = max(self.max_depth, d)
            for i in node.inputs:
                if i < n:
                    self.users_col[i] += 1
            if node.id < n:
                self.depth_col[node.id] = d
                self.nodes[node.id] = _node_features(node)
                self.adjacency[node.id, list(node.inputs)] = 1.0
        self.n_seen, self.last = len(g.nodes), g.nodes[-1]
        shown = min(len(g.nodes), n)
        rows = self.nodes[:shown]
        rows[:, _TAIL + 2] = np.minimum(self.depth_col[:shown] / max(self.max_depth, 8), 1.0)
        rows[:, _TAIL + 3] = np.minimum(self.users_col[:shown] / 4.0, 1.0)
        rows[:, _TAIL + 4] = 0.0
        rows[[b for b in g.branches if b < n], _TAIL + 4] = 1.0
        self.node_mask[:shown] = 1.0
        return self.nodes.copy(), self.adjacency.copy(), self.node_mask.copy()


class KernelConstructionEnv(gym.Env):
    """Build a kernel one primitive at a time; the reward comes at the end.

    **Actions** — a flat ``Discrete`` over the search space's action table
    (primitive template x operand branches, fork, finish; see
    :mod:`kasrl.space.config`). :meth:`action_masks` (read by sb3-contrib) and
    ``info["action_mask"]`` give the legal ones; masks are exact and never all
    zero. ``finish`` is legal from ``min_steps`` on; at ``max_steps`` the kernel
    is finished automatically.

    **Observations** — a ``Dict`` of fixed-size padded arrays, finite values:

    * ``nodes`` ``[max_nodes, NODE_FEATURES]``: primitive family, per-slot shape
      features, closing/new-size flags, depth, fan-out, open-branch flag;
    * ``adjacency`` ``[max_nodes, max_nodes]``: 1 where column j feeds row i;
    * ``node_mask`` ``[max_nodes]``: 1 for real nodes;
    * ``branches`` ``[max_width, max_nodes]``: one-hot node of each open branch;
    * ``budget`` ``[7]``: FLOPs and params used (lowest known sizes, fraction of
      the budget, worst placement), steps and width used, "a branch has C
      channels", free sizes so far, and predicted latency used (as the FLOPs;
      0 when latency is not budgeted).

    **Reward** — 0 until the episode ends, then the evaluator's reward for the
    finished kernel. ``step`` never raises on a bad kernel: a failure is a
    penalty with the typed cause in ``info``.

    ``info`` keys: ``action_mask`` (always); at the end also ``kernel`` (the
    JSON document), ``kernel_hash``, ``status`` (label), ``metrics``,
    ``objectives``, ``cause`` (empty when OK) and ``result`` (the
    :class:`~kasrl.eval.base.EvalResult`). With ``invalid_action="penalize"``
    a masked action leaves the state unchanged and adds ``error``.

    Args:
        placements: where the kernels will be used (default ResNet-18's stages).
        budget: FLOPs / params / tensor budget per placement.
        space_config: the primitive library and kernel limits (or pass ``max_steps``).
        solver_config: CP-SAT settings.
        evaluator: reward source (default :class:`AnalyticEvaluator`).
        space: an existing :class:`SearchSpace` (shares its caches; overrides the above).
        max_steps: shortcut for ``space_config.max_steps``.
        invalid_action: ``"raise"`` (default: :class:`IllegalAction`, state
            untouched) or ``"penalize"`` (reward ``invalid_penalty``, state
            untouched; for agents that do not use masks).
        invalid_penalty: reward for a masked action under ``"penalize"``.
        render_mode: ``None`` or ``"ansi"`` (the kernel so far as text).
        sizes: how the finished kernel's sizes are chosen: ``"fill"`` (default;
            CP-SAT fills the budget that decides speed, tens of milliseconds per
            episode: see :meth:`SearchSpace.finish`), ``"max_flops"``,
            ``"max_capacity"``, or ``"feasible"`` (the first legal sizes, usually
            the oracle's witness without a solve; with the analytic evaluator, the
            cheapest fidelity for quick runs).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        placements: Sequence[Placement] | None = None,
        budget: Budget | None = None,
        space_config: SpaceConfig | None = None,
        solver_config: SolverConfig | None = None,
        evaluator: Evaluator | None = None,
        space: SearchSpace | None = None,
        max_steps: int | None = None,
        invalid_action: str = "raise",
        invalid_penalty: float = -0.1,
        render_mode: str | None = None,
        sizes: str = "fill",
    ) -> None:
        if invalid_action not in ("raise", "penalize"):
            raise KasrlError(f"`invalid_action` must be 'raise' or 'penalize', got {invalid_action!r}")
        if render_mode not in (None, "ansi"):
            raise KasrlError(f"`render_mode` must be None or 'ansi', got {render_mode!r}")
        if sizes not in SIZE_OBJECTIVES:
            raise KasrlError(f"`sizes` must be one of {', '.join(SIZE_OBJECTIVES)}, got {sizes!r}")
        if space is None:
            cfg = space_config or SpaceConfig()
            if max_steps is not None:
                cfg = SpaceConfig(**{**cfg.__dict__, "max_steps": max_steps, "min_steps": min(cfg.min_steps, max_steps)})
            space = SearchSpace(placements or RESNET18_PLACEMENTS, budget, cfg, solver_config)
        self.space = space
        self.evaluator = evaluator or AnalyticEvaluator(space.placements)
        self.invalid_action = invalid_action
        self.invalid_penalty = invalid_penalty
        self.render_mode = render_mode
        self.sizes = sizes
        cfg = space.config
        self.max_width = cfg.max_width
        self.max_nodes = cfg.max_steps + 4 * cfg.max_width + 8
        n = self.max_nodes
        self.action_space = MaskedDiscrete(space.n_actions, self.action_masks)
        self.observation_space = spaces.Dict(
            {
                "nodes": spaces.Box(-1.0, 1.0, (n, NODE_FEATURES), np.float32),
                "adjacency": spaces.Box(0.0, 1.0, (n, n), np.float32),
                "node_mask": spaces.Box(0.0, 1.0, (n,), np.float32),
                "branches": spaces.Box(0.0, 1.0, (self.max_width, n), np.float32),
                "budget": spaces.Box(0.0, 1.0, (BUDGET_FEATURES,), np.float32),
            }
        )
        self.state: SearchState | None = None
        self.kernel: KernelGraph | None = None
        self._done = False
        self._observer = _GraphObserver(n)
        self._peeked: tuple | None = None

    # -- Gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        """Start a new kernel from the input tensor alone."""
        super().reset(seed=seed)
        self.state = self.space.reset()
        self.kernel = None
        self._done = False
        self._observer.reset()
        self._peeked = None
        return self._observation(), {"action_mask": self.action_masks()}

    def step(self, action: int) -> tuple:
        """Apply one action; see the class docstring for the returned ``info``.

        Raises:
            IllegalAction: for a masked action when ``invalid_action="raise"``
                (the state is left as it was).
        """
        if self.state is None or self._done:
            raise KasrlError("call reset() before step(): the episode has ended or not started")
        action = int(action)
        if not self.space.is_legal(self.state, action):
            if self.invalid_action == "raise":
                self.space.apply(self.state, action)  # raises IllegalAction with the reason
            info = {"action_mask": self.action_masks(), "error": f"action {action} is masked in this state"}
            return self._observation(), float(self.invalid_penalty), False, False, info
        act = self.space.table[action]
        if act.kind != "finish":
            peeked = self._peeked
            reuse = peeked is not None and peeked[0] is self.state and peeked[1] == action
            self.state = peeked[2] if reuse else self.space.apply(self.state, action)
            if self.state.steps < self.space.config.max_steps:
                return self._observation(), 0.0, False, False, {"action_mask": self.action_masks()}
        return self._finish()

    def peek_kernel(self, action: int) -> KernelGraph | None:
        """The finished kernel that ``step(action)`` would evaluate, or None when it would not end the episode with one.

        The state does not change; the next ``step(action)`` reuses the applied
        action and the kernel instead of computing them again. A vectorised env
        uses this to evaluate the kernels of all the episodes that end on the
        same step together (:class:`agents.ppo.EvaluateTogetherVecEnv`).
        """
        action = int(action)
        if self.state is None or self._done or not self.space.is_legal(self.state, action):
            return None
        s = self.state if self.space.table[action].kind == "finish" else self.space.apply(self.state, action)
        kernel = None
        if s is self.state or s.steps >= self.space.config.max_steps:
            try:
                kernel = self.space.finish(s, self.sizes)
            except (SolverInfeasible, IllegalAction):
                pass  # step() finishes again and records the failure
        self._peeked = (self.state, action, s, kernel)
        return kernel

    def action_masks(self) -> np.ndarray:
        """The legal actions of the current state (``int8``; sb3-contrib reads this)."""
        if self.state is None:
            self.state = self.space.reset()
        if self._done:
            return self.space.action_mask(self.space.reset()).copy()  # any legal move of a new episode
        return self.space.action_mask(self.state).copy()  # a copy: the space caches masks per state

    def render(self) -> str | None:
        """The kernel so far as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi" or self.state is None:
            return None
        g = self.kernel if self.kernel is not None else self.state.graph
        head = f"steps {self.state.steps}/{self.space.config.max_steps}, width {self.state.width}"
        return head + "\n" + g.describe() + "\n"

    # -- internals ----------------------------------------------------------------
    def _finish(self) -> tuple:
        self._done = True
        peeked, self._peeked = self._peeked, None
        try:
            reuse = peeked is not None and peeked[2] is self.state and peeked[3] is not None
            kernel = peeked[3] if reuse else self.space.finish(self.state, self.sizes)
        except (SolverInfeasible, IllegalAction) as e:
            result = failure(Status.BUDGET_VIOLATION, f"finishing failed: {e}", fidelity=self.evaluator.fidelity)
            return self._observation(), result.reward, True, False, self._end_info(self.state.graph, result)
        self.kernel = kernel
        try:
            result = self.evaluator.evaluate(kernel)
        except Exception as e:  # a broken evaluator must not kill a long run
            result = failure(Status.CRASH, f"evaluator raised {type(e).__name__}: {e}", fidelity=self.evaluator.fidelity)
        return self._observation(kernel), float(result.reward), True, False, self._end_info(kernel, result)

    def _end_info(self, g: KernelGraph, result: EvalResult) -> dict:
        return {
            "action_mask": self.action_masks(),
            "kernel": to_document(g),
            "kernel_hash": result.kernel_hash or kernel_hash(g),
            "status": result.status.label,
            "metrics": dict(result.metrics),
            "objectives": tuple(result.objectives),
            "cause": result.cause,
            "result": result,
        }

    def _observation(self, kernel: KernelGraph | None = None) -> dict:
        g = kernel if kernel is not None else self.state.graph
        nodes, adjacency, node_mask = self._observer.update(g)
        branches = np.zeros((self.max_width, self.max_nodes), dtype=np.float32)
        for k, b in enumerate(g.branches[: self.max_width]):
            if b < self.max_nodes:
                branches[k, b] = 1.0
        budget = self._budget_features(g, kernel is None)
        return {"nodes": nodes, "adjacency": adjacency, "node_mask": node_mask, "branches": branches, "budget": budget}

    def _budget_features(self, g: KernelGraph, open_state: bool) -> np.ndarray:
        cfg = self.space.config
        out = np.zeros(BUDGET_FEATURES, dtype=np.float32)
        costs = self.state.witness_costs if open_state else None
        if costs is not None:
            lims = self.space.solver.limits
            out[0] = min(max(f / lim.flops for f, lim in zip(costs[0], lims, strict=False)), 1.0)
            out[1] = min(max(p / lim.params for p, lim in zip(costs[1], lims, strict=False)), 1.0)
            if len(costs) > 2:
                out[6] = min(max(t / lim.latency for t, lim in zip(costs[2], lims, strict=False)), 1.0)
        out[2] = min(g.steps / cfg.max_steps, 1.0)
        out[3] = min(g.width / cfg.max_width, 1.0)
        out[4] = float(any(g.branch_shape(i)[C_SLOT] == C for i in range(g.width)))
        out[5] = min(g.n_free / 16.0, 1.0)
        return out

