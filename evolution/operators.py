"""Variation and selection operators on action-sequence genomes (DEAP conventions, seeded RNG).

Every operator takes the search space and a ``random.Random`` (never DEAP's global
RNG) and, like DEAP's, modifies individuals in place and returns them in a tuple
with their fitness invalidated. Variation always ends with :func:`~evolution.genome.decode`,
so a child is a finished, solved, legal kernel and its genome is canonical.

========================  ==========================================================
``mut_change_step``       one step becomes another action that is legal where it lands
``mut_insert_step``       a legal action is inserted before some step
``mut_delete_step``       one step is removed (later steps are repaired as needed)
``mut_step``              one of the three above, among those that can change the genome
``cx_one_point``          swap the tails after one common cut point
``cx_two_point``          swap the segments between two common cut points
``sel_tournament``        best of ``tournsize`` drawn without replacement, ``k`` times
``sel_tournament_dcd``    binary tournament on Pareto dominance, then crowding distance
========================  ==========================================================

>>> import random
>>> from kasrl.space import SearchSpace, SpaceConfig
>>> from evolution.genome import Individual, decode
>>> space, rng = SearchSpace(config=SpaceConfig(max_steps=8, min_steps=2)), random.Random(0)
>>> parent = Individual(decode(space, [space.index("fork", 0)], rng).actions)
>>> child, = mut_step(parent.clone(), space, rng)
>>> child.kernel.is_finished and child[-1] == 0 and not child.fitness.valid
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from evolution.genome import Decoded, choose_legal, decode, decode_steps, finish_decoding
from kasrl.space import SearchSpace

__all__ = [
    "mut_change_step",
    "mut_insert_step",
    "mut_delete_step",
    "mut_step",
    "cx_one_point",
    "cx_two_point",
    "sel_tournament",
    "sel_tournament_dcd",
]


def _body(genome: Sequence[int]) -> list:
    """The genome without its closing finish action."""
    body = [int(a) for a in genome]
    return body[:-1] if body and body[-1] == 0 else body


def _assign(ind, decoded: Decoded, origin: str):
    """Write a decoded child into ``ind`` (in place, the DEAP way) and invalidate its fitness."""
    ind[:] = decoded.actions
    if hasattr(ind, "fitness"):
        if ind.fitness.valid:
            del ind.fitness.values
        ind.kernel, ind.repairs, ind.origin, ind.hash = decoded.kernel, decoded.repairs, origin, ""
        ind.reward = ind.objectives = None
        ind.ok = False
    return ind


def _splice(space: SearchSpace, body: list, p: int, new_at_p, skip: int, rng: random.Random, family_first: bool) -> Decoded:
    """Decode ``body[:p] + [choice] + body[p + skip:]``.

    ``choice`` is drawn by ``new_at_p(state)`` in the state the prefix reaches (None: insert nothing).
    """
    g, taken, repairs, done = decode_steps(space, space.reset(), body[:p], rng, family_first)
    rest = body[p + skip :]
    if done:
        return finish_decoding(space, g, taken, repairs + len(rest) + 1, rng, family_first)
    a = new_at_p(g)
    if a is not None and a != 0:
        taken.append(a)
        g = space.apply(g, a, in_place=True)
    g, more, r2, _ = decode_steps(space, g, rest, rng, family_first)
    return finish_decoding(space, g, taken + more, repairs + r2, rng, family_first)


def mut_change_step(ind, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Replace one step by a different action that is legal in the state it is taken in.

    Returns:
        ``(ind,)``, changed in place.
    """
    body = _body(ind)
    if not body:
        return mut_insert_step(ind, space, rng, family_first)
    p = rng.randrange(len(body))
    old = body[p]
    decoded = _splice(space, body, p, lambda g: choose_legal(space, g, rng, family_first, exclude=(old,)), 1, rng, family_first)
    return (_assign(ind, decoded, "mutation"),)


def mut_insert_step(ind, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Insert a legal action before a random step (or at the end); later steps are repaired as needed.

    Returns:
        ``(ind,)``, changed in place.
    """
    body = _body(ind)
    p = rng.randrange(min(len(body), space.config.max_steps - 1) + 1)
    decoded = _splice(space, body, p, lambda g: choose_legal(space, g, rng, family_first), 0, rng, family_first)
    return (_assign(ind, decoded, "mutation"),)


def mut_delete_step(ind, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Delete a random step; branch indices of later steps are repaired where they no longer fit.

    Returns:
        ``(ind,)``, changed in place.
    """
    body = _body(ind)
    if not body:
        return mut_insert_step(ind, space, rng, family_first)
    p = rng.randrange(len(body))
    decoded = decode(space, body[:p] + body[p + 1 :] + [0], rng, family_first)
    return (_assign(ind, decoded, "mutation"),)


def mut_step(ind, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Change, insert or delete one step, uniformly among the moves that fit the genome's length.

    Insertion needs room below ``max_steps``; deletion needs more than ``min_steps`` steps.

    Returns:
        ``(ind,)``, changed in place.
    """
    n = len(_body(ind))
    moves = [mut_change_step] if n else []
    if n < space.config.max_steps:
        moves.append(mut_insert_step)
    if n > max(space.config.min_steps, 1):
        moves.append(mut_delete_step)
    return rng.choice(moves)(ind, space, rng, family_first)


def cx_one_point(ind1, ind2, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Swap the tails of two genomes after a common cut point (DEAP's ``cxOnePoint`` on bodies), then decode.

    Actions name branches by index, so a tail can land on different branches in
    its new context; the decoder repairs what no longer fits.

    Returns:
        ``(ind1, ind2)``, changed in place.
    """
    b1, b2 = _body(ind1), _body(ind2)
    size = min(len(b1), len(b2))
    cut = rng.randint(1, size - 1) if size >= 2 else min(size, 1)
    c1, c2 = b1[:cut] + b2[cut:], b2[:cut] + b1[cut:]
    return (_assign(ind1, decode(space, c1 + [0], rng, family_first), "crossover"),
            _assign(ind2, decode(space, c2 + [0], rng, family_first), "crossover"))


def cx_two_point(ind1, ind2, space: SearchSpace, rng: random.Random, family_first: bool = True) -> tuple:
    """Swap the segments between two common cut points (DEAP's ``cxTwoPoint`` on bodies), then decode.

    Falls back to :func:`cx_one_point` when the shorter genome has fewer than 3 steps.

    Returns:
        ``(ind1, ind2)``, changed in place.
    """
    b1, b2 = _body(ind1), _body(ind2)
    size = min(len(b1), len(b2))
    if size < 3:
        return cx_one_point(ind1, ind2, space, rng, family_first)
    p1, p2 = sorted(rng.sample(range(1, size), 2))
    c1, c2 = b1[:p1] + b2[p1:p2] + b1[p2:], b2[:p1] + b1[p1:p2] + b2[p2:]
    return (_assign(ind1, decode(space, c1 + [0], rng, family_first), "crossover"),
            _assign(ind2, decode(space, c2 + [0], rng, family_first), "crossover"))


def sel_tournament(individuals: Sequence, k: int, tournsize: int, rng: random.Random, fit_attr: str = "fitness") -> list:
    """DEAP's ``selTournament`` with a seeded RNG.

    Aspirants are drawn without replacement (Real et al.'s "sample S individuals");
    ties go to the earlier aspirant.

    Returns:
        ``k`` references into ``individuals``.
    """
    size = min(tournsize, len(individuals))
    return [max(rng.sample(list(individuals), size), key=lambda ind: getattr(ind, fit_attr)) for _ in range(k)]


def sel_tournament_dcd(individuals: Sequence, k: int, rng: random.Random) -> list:
    """Binary tournaments on Pareto dominance, then crowding distance.

    DEAP's ``selTournamentDCD`` semantics without its multiple-of-four restriction.
    Needs ``fitness.crowding_dist``, which ``tools.selNSGA2`` assigns.

    Returns:
        ``k`` references into ``individuals``.
    """
    pool = list(individuals)

    def duel(a, b):
        if a.fitness.dominates(b.fitness):
            return a
        if b.fitness.dominates(a.fitness):
            return b
        da, db = getattr(a.fitness, "crowding_dist", 0.0), getattr(b.fitness, "crowding_dist", 0.0)
        if da != db:
            return a if da > db else b
        return a if rng.random() < 0.5 else b

    if len(pool) < 2:
        return [pool[0]] * k
    return [duel(*rng.sample(pool, 2)) for _ in range(k)]
