"""The Canvas-style random sampler: the baseline every search must beat.

Pseudocode of :meth:`RandomSampler.ask`::

    n ~ U{steps}                   # how many primitives this kernel gets
    w ~ U{widths}                  # the most branches it may open
    state = input
    while steps(state) < n:
        legal = mask(state) minus finish, minus forks once width(state) == w
        pick uniformly among legal actions
            (family_first: a family uniformly, then one of its actions)
        state = apply(state, action)
    finish(state)                  # close and solve sizes with CP-SAT

Masks are exact, so every draw ends in a legal, solved kernel: no restarts.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult
from kasrl.space import SearchSpace, SearchState
from kasrl.strategy import BestTracker, Proposal, Strategy, StrategyContext

__all__ = ["RandomSampler", "RandomOptions"]


@dataclass
class RandomOptions:
    """Options of the random sampler (``configs/strategies/random*.yaml``)."""

    family_first: bool = False
    """Draw a primitive family uniformly, then one of its legal actions (else uniform over legal actions)."""
    sizes: str = "fill"
    """How the finishing step sizes a kernel: fill | max_flops | max_capacity | feasible (see SearchSpace.finish)."""
    steps: list[int] | None = None
    """[low, high] actions per kernel (None: the space's min_steps..max_steps)."""
    widths: list[int] | None = None
    """[low, high] of the most branches open at once (None: 2..max_width)."""

    def validate(self) -> None:
        """Check the ranges' shapes (their bounds are checked against the space).

        Raises:
            ConfigError: naming the key.
        """
        for key in ("steps", "widths"):
            v = getattr(self, key)
            if v is not None and (len(v) != 2 or v[0] > v[1] or v[0] < 1):
                raise ConfigError(f"`options.{key}` must be [low, high] with 1 <= low <= high, got {list(v)}")


class RandomSampler(Strategy):
    """Uniform random construction over legal actions (Canvas's baseline, without restarts).

    Args:
        space: the search space (placements, budget, primitive library).
        seed: seeds every random choice; the same seed gives the same kernels.
        steps: inclusive range of actions per kernel (Canvas: 5 to 25).
        widths: inclusive range of the most branches open at once (Canvas: 2 to 8).
        family_first: draw a primitive family uniformly, then one of its legal
            actions (uniform over actions over-samples families with many
            variants, such as convolutions).
        sizes: how the finishing step sizes a kernel (see
            :meth:`~kasrl.space.SearchSpace.finish`): ``"fill"`` (CP-SAT sizes
            that fill the budget that decides speed) or ``"feasible"`` (the first
            legal sizes; faster).
    """

    name = "random"
    Options = RandomOptions

    def __init__(self, space: SearchSpace, seed: int = 0, steps: tuple = (5, 25), widths: tuple = (2, 8), family_first: bool = False,
                 sizes: str = "fill") -> None:
        lo, hi = steps
        if not 1 <= lo <= hi <= space.config.max_steps:
            raise ValueError(f"`steps` must satisfy 1 <= low <= high <= max_steps ({space.config.max_steps}), got {steps}")
        if not 1 <= widths[0] <= widths[1]:
            raise ValueError(f"`widths` must satisfy 1 <= low <= high, got {widths}")
        space.resolve_objective(sizes)
        self.space = space
        self.seed = seed
        self.context = StrategyContext(space, seed)
        self.options = RandomOptions(family_first, sizes, [lo, hi], list(widths))
        self.steps = (lo, hi)
        self.widths = tuple(widths)
        self.family_first = family_first
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.best = BestTracker()
        self._fork_actions = np.array([a for a, act in enumerate(space.table.actions) if act.kind == "fork"], dtype=np.int64)
        self._families = [act.family for act in space.table.actions]

    @classmethod
    def create(cls, context: StrategyContext, options: RandomOptions) -> RandomSampler:
        """The registry's constructor: ``options`` over the space's whole range."""
        space = context.space
        cfg = space.config
        steps = tuple(options.steps) if options.steps else (cfg.min_steps, cfg.max_steps)
        widths = tuple(options.widths) if options.widths else (min(2, cfg.max_width), cfg.max_width)
        try:
            out = cls(space, context.seed, steps, widths, options.family_first, options.sizes)
        except ValueError as e:
            raise ConfigError(f"`options`: {e}") from None
        out.context, out.options = context, options
        return out

    @classmethod
    def from_space(cls, space: SearchSpace, seed: int = 0, family_first: bool = False, sizes: str = "fill") -> RandomSampler:
        """A sampler over the whole range the space allows: ``min_steps..max_steps`` actions, ``2..max_width`` branches."""
        cfg = space.config
        return cls(space, seed, steps=(cfg.min_steps, cfg.max_steps), widths=(min(2, cfg.max_width), cfg.max_width),
                   family_first=family_first, sizes=sizes)

    def _choose(self, state: SearchState, target: int, width_cap: int) -> int:
        mask = self.space.action_mask(state).copy()
        if state.steps < target and mask[1:].any():
            mask[0] = 0
        elif mask[0]:
            return 0
        if state.width >= width_cap and len(self._fork_actions):
            saved = mask.copy()
            mask[self._fork_actions] = 0
            if not mask.any():
                mask = saved
        legal = np.flatnonzero(mask)
        if not self.family_first:
            return int(legal[self.rng.randrange(len(legal))])
        by_family = defaultdict(list)
        for a in legal:
            by_family[self._families[a]].append(int(a))
        family = self.rng.choice(sorted(by_family))
        return self.rng.choice(by_family[family])

    def sample_actions(self) -> tuple:
        """Draw one kernel: ``(finished kernel, action sequence)``."""
        target = self.rng.randint(*self.steps)
        width_cap = self.rng.randint(*self.widths)
        g = self.space.reset()
        actions = []
        while True:
            a = self._choose(g, target, width_cap)
            actions.append(a)
            if a == 0:  # finish (at the step cap it is the only legal action)
                return self.space.finish(g, self.sizes), tuple(actions)
            g = self.space.apply(g, a, in_place=True)

    def ask(self) -> Proposal:
        """A new random kernel."""
        kernel, actions = self.sample_actions()
        return Proposal(kernel, actions)

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Track the best result (random sampling does not learn)."""
        self.best.update(result)

    def state_dict(self) -> dict:
        """The RNG state and best-so-far."""
        return {"rng": self.rng.getstate(), "best": self.best.state_dict(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.setstate(_as_state(state["rng"]))
        self.best.load_state_dict(state["best"])


def _as_state(s):
    """``random.Random`` state restored from JSON (lists) or pickle (tuples)."""
    if isinstance(s, list):
        return (s[0], tuple(s[1]), s[2])
    return s
