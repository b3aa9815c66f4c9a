"""The genome: the environment's action sequence, decoded through the same search space.

An individual is a list of action indices into :attr:`SearchSpace.table`. It is
*decoded* by replaying it from the initial state; an action that is masked in
the state it meets (variation moved it there) is **repaired** rather than
rejected, so every genome decodes to a finished, solved, legal kernel. The
decoded sequence is then the individual's canonical genome (it replays exactly,
with no repair).

Pseudocode of :func:`decode`::

    state = input
    for action in genome:
        if state has max_steps actions:  stop                # the rest is dropped (repairs)
        if action is finish:
            finish if legal, else skip it (repair)
        elif action is legal:  take it
        else:                                                # repair, deterministic first
            the same template on the nearest other branch(es), if legal
            else one of the same family's legal actions      (seeded)
            else any legal non-finish action                 (seeded)
    until finished:  finish if legal, else a seeded legal action (repairs)

>>> import random
>>> from kasrl.space import SearchSpace, SpaceConfig
>>> space = SearchSpace(config=SpaceConfig(max_steps=8, min_steps=2))
>>> d = decode(space, [space.index("fork", 0), space.index("shift", 5, axes="H", offset=1)], random.Random(0))
>>> d.kernel.is_finished, d.repairs                   # there is no branch 5: the shift moves to branch 1
(True, 1)
>>> [space.table[a].label() for a in d.actions]
['fork(0)', 'shift[H,offset=1](1)', 'finish']
>>> decode(space, d.actions, random.Random(1)).repairs           # canonical: replays as it is
0
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from deap import base

from kasrl.ir.graph import KernelGraph
from kasrl.space import SearchSpace, SearchState
from kasrl.space.config import Action

__all__ = ["Decoded", "decode", "decode_steps", "finish_decoding", "choose_legal", "FitnessMax", "FitnessPareto", "Individual"]


class FitnessMax(base.Fitness):
    """One objective, maximised: the run's reward."""

    weights = (1.0,)


class FitnessPareto(base.Fitness):
    """Two objectives, both maximised: ``(speedup, accuracy)`` measured, ``(1/flops_ratio, params_ratio)`` analytic."""

    weights = (1.0, 1.0)


class Individual(list):
    """A genome (a list of action indices) with a DEAP fitness and what the run learnt about it.

    Defined here instead of with ``deap.creator`` so no global class registry is touched.

    Attributes:
        fitness: a :class:`FitnessMax` or :class:`FitnessPareto` (invalid until evaluated).
        uid: birth order in its run (0, 1, ...; -1 before it is proposed); aging evolution removes the lowest.
        kernel: the decoded, solved kernel (not saved in checkpoints; rebuilt with ``space.replay``).
        hash: the kernel's canonical hash.
        origin: ``"random"``, ``"mutation"`` or ``"crossover"``.
        repairs: genome positions the decoder changed, dropped or added.
        reward: the evaluated reward (None until evaluated).
        objectives: the evaluated two-objective form (None until evaluated).
        ok: True when the evaluation succeeded.
    """

    def __init__(self, actions: Sequence[int] = (), fitness_class: type = FitnessMax) -> None:
        super().__init__(int(a) for a in actions)
        self.fitness = fitness_class()
        self.uid = -1
        self.kernel: KernelGraph | None = None
        self.hash = ""
        self.origin = "random"
        self.repairs = 0
        self.reward: float | None = None
        self.objectives: tuple | None = None
        self.ok = False

    def clone(self) -> Individual:
        """A copy that shares the (immutable, finished) kernel instead of copying it."""
        twin = Individual(self, type(self.fitness))
        if self.fitness.valid:
            twin.fitness.values = self.fitness.values
        for k in ("uid", "kernel", "hash", "origin", "repairs", "reward", "objectives", "ok"):
            setattr(twin, k, getattr(self, k))
        return twin

    def __deepcopy__(self, memo) -> Individual:  # HallOfFame / ParetoFront insert deep copies
        return self.clone()

    def __reduce__(self):  # pickled without the kernel: a canonical genome replays exactly
        return (_rebuild, (self.to_dict(), type(self.fitness)))

    def to_dict(self) -> dict:
        """Plain data for checkpoints (the kernel is left out; see :meth:`from_dict`)."""
        return {"actions": list(self), "fitness": list(self.fitness.values) if self.fitness.valid else None, "uid": self.uid,
                "hash": self.hash, "origin": self.origin, "repairs": self.repairs, "reward": self.reward,
                "objectives": list(self.objectives) if self.objectives is not None else None, "ok": self.ok}

    @classmethod
    def from_dict(cls, d: dict, fitness_class: type = FitnessMax) -> Individual:
        """Restore :meth:`to_dict` (``kernel`` stays None)."""
        ind = cls(d["actions"], fitness_class)
        if d["fitness"] is not None:
            ind.fitness.values = tuple(d["fitness"])
        for k in ("uid", "hash", "origin", "repairs", "reward", "ok"):
            setattr(ind, k, d[k])
        ind.objectives = tuple(d["objectives"]) if d["objectives"] is not None else None
        return ind


def _rebuild(d: dict, fitness_class: type) -> Individual:
    return Individual.from_dict(d, fitness_class)


@dataclass(frozen=True)
class Decoded:
    """What :func:`decode` made of a genome.

    Attributes:
        kernel: the finished, solved kernel.
        actions: the canonical genome (the actions actually taken, ending with finish).
        repairs: genome positions changed, dropped or added to make it legal.
    """

    kernel: KernelGraph
    actions: tuple
    repairs: int


def choose_legal(space: SearchSpace, state: SearchState, rng: random.Random, family_first: bool = True, allow_finish: bool = False,
                 exclude: Sequence[int] = ()) -> int | None:
    """A seeded draw among the legal actions of ``state`` (None when there is none).

    Args:
        space: the search space.
        state: the state to draw an action for.
        rng: the source of the draw.
        family_first: draw a primitive family uniformly, then one of its legal actions
            (uniform over actions would mostly draw convolutions).
        allow_finish: let the draw be the finish action (kept only when nothing else is legal).
        exclude: actions not to draw.
    """
    mask = space.action_mask(state).copy()
    for a in exclude:
        if 0 <= a < len(mask):
            mask[a] = 0
    if not allow_finish and mask[1:].any():
        mask[0] = 0
    legal = np.flatnonzero(mask)
    if not len(legal):
        return None
    if not family_first:
        return int(legal[rng.randrange(len(legal))])
    by_family: dict = defaultdict(list)
    for a in legal:
        by_family[space.table[int(a)].family].append(int(a))
    family = rng.choice(sorted(by_family))
    return rng.choice(by_family[family])


def _nearest_same_template(space: SearchSpace, state: SearchState, act: Action, mask: np.ndarray) -> int | None:
    """The same fork/template on the nearest other branch (or pair) that is legal, deterministically."""
    width = state.width
    if act.kind in ("fork", "unary"):
        (i,) = act.operands
        candidates = sorted(range(width), key=lambda j: (abs(j - i), j))
        options = [(j,) for j in candidates]
    elif act.kind == "binary":
        i, j = act.operands
        pairs = [(a, b) for a in range(width) for b in range(width) if a != b]
        options = sorted(pairs, key=lambda p: (abs(p[0] - i) + abs(p[1] - j), p))
    else:
        return None
    for ops in options:
        idx = space.table.index.get(Action(act.kind, act.prim, ops))
        if idx is not None and mask[idx]:
            return idx
    return None


def _repair(space: SearchSpace, state: SearchState, action: int, rng: random.Random, family_first: bool) -> int:
    """A legal replacement for the masked ``action`` (see the module docstring)."""
    mask = space.action_mask(state)
    if 0 <= action < len(space.table):
        act = space.table[action]
        same = _nearest_same_template(space, state, act, mask)
        if same is not None:
            return same
        family = [a for a in np.flatnonzero(mask) if a != 0 and space.table[int(a)].family == act.family]
        if family:
            return int(family[rng.randrange(len(family))])
    choice = choose_legal(space, state, rng, family_first, allow_finish=True)
    return 0 if choice is None else choice


def decode_steps(space: SearchSpace, state: SearchState, genome: Sequence[int], rng: random.Random, family_first: bool = True) -> tuple:
    """Take ``genome``'s actions from ``state`` on (in place), repairing masked ones; do not finish.

    Returns:
        ``(state, taken, repairs, done)``: the state, the actions taken, the repairs
        made, and True when the genome finished early (a legal finish, or the step
        cap; the rest of the genome is dropped and counted as repairs).
    """
    taken: list = []
    repairs = 0
    max_steps = space.config.max_steps
    genome = [int(a) for a in genome]
    for pos, a in enumerate(genome):
        if a == 0 and space.is_legal(state, 0):
            return state, taken, repairs + len(genome) - pos - 1, True  # a finish drops what follows it
        if state.steps >= max_steps:
            return state, taken, repairs + len(genome) - pos, True  # only finish is legal now
        if a == 0:
            repairs += 1  # too early to finish: skip it
            continue
        if not space.is_legal(state, a):
            a = _repair(space, state, a, rng, family_first)
            repairs += 1
            if a == 0:  # nothing but finish was legal
                return state, taken, repairs + len(genome) - pos - 1, True
        taken.append(a)
        state = space.apply(state, a, in_place=True)
    return state, taken, repairs, False


def finish_decoding(space: SearchSpace, state: SearchState, taken: list, repairs: int, rng: random.Random,
                    family_first: bool = True) -> Decoded:
    """Finish ``state`` (reached by ``taken``), adding seeded legal actions until finishing is legal."""
    taken = list(taken)
    while not space.is_legal(state, 0):
        a = choose_legal(space, state, rng, family_first)
        repairs += 1
        taken.append(a)
        state = space.apply(state, a, in_place=True)
    taken.append(0)
    return Decoded(space.finish(state), tuple(taken), repairs)


def decode(space: SearchSpace, genome: Sequence[int], rng: random.Random, family_first: bool = True) -> Decoded:
    """Decode ``genome`` into a finished kernel, repairing actions that are not legal where they land.

    Args:
        space: the search space every strategy shares.
        genome: action indices (any list; out-of-range indices are repaired too).
        rng: the seeded source of the repairs' random choices (deterministic given its state).
        family_first: how seeded repairs draw (see :func:`choose_legal`).

    Returns:
        The kernel, the canonical genome and the number of repairs.

    Raises:
        SolverInfeasible: when CP-SAT cannot size the finished kernel in time (rare).
    """
    g, taken, repairs, _ = decode_steps(space, space.reset(), genome, rng, family_first)
    return finish_decoding(space, g, taken, repairs, rng, family_first)
