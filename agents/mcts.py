"""Monte-Carlo tree search over the exact-masked action space (Syno-style UCT with progressive widening).

The tree is over action prefixes: the root is the empty kernel, a child adds one
legal action, and the ``finish`` action makes a leaf whose kernel is complete.
Masks are exact, so every path the tree or a rollout takes can be finished.

Pseudocode of :meth:`MCTS.ask` (one evaluation per call)::

    node = root
    loop:
        if node is a finished kernel: take it                            # a leaf
        if node has fewer children than c_pw * visits(node) ** alpha     # progressive widening
           and legal actions it has not tried:
            child = the next untried action (drawn from the prior: a family first, then one of its actions)
            kernel = rollout(child)                                      # random completion from there
            take it
        node = argmax over children of  Q(child) + c_uct * sqrt(ln visits(node) / visits(child))
               (children whose subtree is used up are skipped)
    virtual visit along the path (so a batch of asks spreads out)

:meth:`MCTS.tell` backs the reward up the path: each node keeps the mean and the
best of its subtree's rewards, normalised by the range seen so far (rewards are
log speedups and penalties, not in [0, 1]); ``Q`` mixes them (``best_weight``),
since a search for the best kernel cares about the best leaf below a node
more than the average. A finished kernel is evaluated once: its leaf is then
used up, and so is a node whose children are all used up and has nothing left
to try.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from kasrl.errors import ConfigError, KasrlError
from kasrl.eval.base import EvalResult
from kasrl.ir.canonical import kernel_hash
from kasrl.strategy import BestTracker, Proposal, Strategy, StrategyContext

__all__ = ["MCTS", "MCTSOptions"]


@dataclass
class MCTSOptions:
    """Options of MCTS (``configs/strategies/mcts.yaml``)."""

    c_uct: float = 0.7
    """Exploration weight of UCT (rewards normalised to [0, 1])."""
    c_pw: float = 1.5
    """Progressive widening: a node may have ``c_pw * visits ** alpha`` children."""
    alpha: float = 0.5
    """Progressive widening's exponent."""
    best_weight: float = 0.5
    """Q = (1 - w) * mean + w * best of the subtree's normalised rewards."""
    family_first: bool = True
    """Expansions and rollouts draw a primitive family first, then one of its actions."""
    sizes: str = "fill"
    """How a finished kernel is sized (see SearchSpace.finish)."""
    batch: int = 1
    """Kernels asked per round (virtual visits spread them over the tree)."""
    novelty_tries: int = 8
    """Rollouts tried per ask before a kernel already proposed is accepted."""

    def validate(self) -> None:
        """Check values that types alone do not catch.

        Raises:
            ConfigError: naming the key.
        """
        checks = [("c_uct", self.c_uct >= 0), ("c_pw", self.c_pw > 0), ("alpha", 0 <= self.alpha <= 1),
                  ("best_weight", 0 <= self.best_weight <= 1), ("batch", self.batch >= 1), ("novelty_tries", self.novelty_tries >= 1)]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"`options.{key}` is out of range, got {getattr(self, key)!r}")


class _Node:
    """One action prefix: visits, reward statistics, children, untried actions."""

    __slots__ = ("visits", "total", "best", "children", "untried", "used_up", "leaf")

    def __init__(self, leaf: bool = False) -> None:
        self.visits = 0
        self.total = 0.0
        self.best = -math.inf
        self.children: dict = {}
        self.untried: list | None = None  # filled on first expansion, in draw order
        self.used_up = False
        self.leaf = leaf


class MCTS(Strategy):
    """UCT over the search space's exact-masked actions with progressive widening and random rollouts.

    Args:
        context: the space and seed.
        options: :class:`MCTSOptions`.
    """

    name = "mcts"
    Options = MCTSOptions

    def __init__(self, context: StrategyContext, options: MCTSOptions | None = None) -> None:
        super().__init__(context, options)
        from agents.random_sampler import RandomSampler

        self.space.resolve_objective(self.options.sizes)
        self.rng = random.Random(self.seed)
        self.rollout_sampler = RandomSampler.from_space(self.space, self.seed, family_first=self.options.family_first,
                                                        sizes=self.options.sizes)
        self.rollout_sampler.rng = self.rng
        self.nodes: dict = {(): _Node()}
        self.lo, self.hi = math.inf, -math.inf
        self.seen: set = set()
        self.best = BestTracker()
        self._families = [act.family for act in self.space.table.actions]

    # -- the tree ------------------------------------------------------------------------------
    def _draw_order(self, state) -> list:
        """The legal actions of ``state`` in the order this node will try them (a seeded draw from the prior)."""
        mask = self.space.action_mask(state)
        legal = [int(a) for a in np.flatnonzero(mask)]
        if not self.options.family_first:
            self.rng.shuffle(legal)
            return legal
        by_family = defaultdict(list)
        for a in legal:
            by_family[self._families[a]].append(a)
        for acts in by_family.values():
            self.rng.shuffle(acts)
        order = []
        families = sorted(by_family)
        while families:  # a family uniformly, then one of its actions, without replacement
            f = self.rng.choice(families)
            order.append(by_family[f].pop())
            if not by_family[f]:
                families.remove(f)
        return order

    def _q(self, node: _Node) -> float:
        if node.visits == 0:
            return math.inf
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        mean = (node.total / node.visits - self.lo) / span
        best = (node.best - self.lo) / span if node.best > -math.inf else mean
        w = self.options.best_weight
        return (1 - w) * mean + w * best

    def _select(self) -> tuple:
        """Walk from the root to a leaf or a new node: ``(path of prefixes, the state it reaches)``
        (a leaf's state is the one its finish action closes)."""
        prefix: tuple = ()
        path = [prefix]
        state = self.space.reset()
        while True:
            node = self.nodes[prefix]
            if node.untried is None:
                node.untried = self._draw_order(state)
            width = max(1, math.ceil(self.options.c_pw * max(node.visits, 1) ** self.options.alpha))
            open_children = [a for a, child in node.children.items() if not self.nodes[child].used_up]
            if node.untried and (len(node.children) < width or not open_children):
                action = node.untried.pop(0)
                child_prefix = prefix + (action,)
                self.nodes[child_prefix] = _Node(leaf=action == 0)
                node.children[action] = child_prefix
                path.append(child_prefix)
                return path, state if action == 0 else self.space.apply(state, action)
            if not open_children:  # nothing left below: used up
                node.used_up = True
                if not prefix:
                    raise KasrlError("MCTS has explored every kernel of the space")
                return self._select()
            log_n = math.log(max(node.visits, 1))
            action = max(open_children, key=lambda a: self._q(self.nodes[node.children[a]])
                         + self.options.c_uct * math.sqrt(log_n / max(self.nodes[node.children[a]].visits, 1e-9)))
            prefix = node.children[action]
            path.append(prefix)
            if action == 0:
                return path, state
            state = self.space.apply(state, action)

    def _rollout(self, state) -> tuple:
        """Complete ``state`` with random legal actions: ``(kernel, actions taken)``."""
        target = self.rng.randint(*self.rollout_sampler.steps)
        actions = []
        while True:
            a = self.rollout_sampler._choose(state, target, self.rollout_sampler.widths[1])
            actions.append(a)
            if a == 0:
                return self.space.finish(state, self.options.sizes), tuple(actions)
            state = self.space.apply(state, a, in_place=True)

    # -- ask / tell ------------------------------------------------------------------------------
    def ask(self) -> Proposal:
        """One kernel: a leaf of the tree or a rollout from a new node (virtually visited until told)."""
        for _ in range(self.options.novelty_tries):
            path, state = self._select()
            if self.nodes[path[-1]].leaf:  # a finished kernel: evaluated once
                kernel, tail = self.space.finish(state, self.options.sizes), ()
                self.nodes[path[-1]].used_up = True
            else:
                kernel, tail = self._rollout(state)
            h = kernel_hash(kernel)
            for prefix in path:  # a virtual visit: the next ask goes elsewhere
                self.nodes[prefix].visits += 1
            if h not in self.seen:
                break
            self._backup(path, None, virtual_only=True)
        self.seen.add(h)
        return Proposal(kernel, path[-1] + tail, {"path": path})

    def ask_many(self, n: int) -> list:
        """``n`` kernels from distinct paths (virtual visits)."""
        return [self.ask() for _ in range(n)]

    def batch_size(self) -> int:
        """``options.batch`` kernels per round."""
        return self.options.batch

    def _backup(self, path: list, reward: float | None, virtual_only: bool = False) -> None:
        for prefix in path:
            node = self.nodes[prefix]
            if virtual_only:
                node.visits = max(node.visits - 1, 0)
                continue
            node.total += reward
            node.best = max(node.best, reward)

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Back the reward up the proposal's path (the visit was counted when it was asked)."""
        r = float(result.reward)
        self.lo, self.hi = min(self.lo, r), max(self.hi, r)
        self.best.update(result)
        self._backup(proposal.meta["path"], r)
        for prefix in reversed(proposal.meta["path"]):  # a node is used up once everything below it is
            node = self.nodes[prefix]
            if node.leaf or node.untried is None or node.untried:
                continue
            if all(self.nodes[c].used_up for c in node.children.values()):
                node.used_up = True

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The tree, the reward range, the kernels proposed and the RNG."""
        tree = {p: (n.visits, n.total, n.best, dict(n.children), None if n.untried is None else list(n.untried), n.used_up, n.leaf)
                for p, n in self.nodes.items()}
        return {"tree": tree, "lo": self.lo, "hi": self.hi, "seen": sorted(self.seen), "rng": self.rng.getstate(),
                "best": self.best.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.nodes = {}
        for prefix, (visits, total, best, children, untried, used_up, leaf) in state["tree"].items():
            node = _Node(leaf)
            node.visits, node.total, node.best, node.children = visits, total, best, dict(children)
            node.untried, node.used_up = untried, used_up
            self.nodes[tuple(prefix)] = node
        self.lo, self.hi = state["lo"], state["hi"]
        self.seen = set(state["seen"])
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.best.load_state_dict(state["best"])
