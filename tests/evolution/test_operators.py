"""Variation always yields finished, legal kernels; selection follows DEAP's semantics with a seeded RNG."""

from __future__ import annotations

import random

import pytest
import torch
from deap import tools

from agents.random_sampler import RandomSampler
from evolution.genome import FitnessMax, FitnessPareto, Individual, decode
from evolution.operators import (
    cx_one_point,
    cx_two_point,
    mut_change_step,
    mut_delete_step,
    mut_insert_step,
    mut_step,
    sel_tournament,
    sel_tournament_dcd,
)
from kasrl.codegen.module import build_module
from kasrl.eval.task_space import task_search_setup
from kasrl.solver.budget import Budget, Placement
from kasrl.space import SearchSpace, SpaceConfig

PLACEMENTS = (Placement(32, 14, 14), Placement(64, 7, 7))


def small_space() -> SearchSpace:
    return SearchSpace(PLACEMENTS, Budget(flops=1.0, params=1.0, max_tensor=16.0), SpaceConfig(min_steps=3, max_steps=10, max_width=4))


@pytest.fixture(scope="module")
def space():
    return small_space()


def _parents(space, seed: int, n: int) -> list:
    """Sampled genomes plus decoded arbitrary integer lists."""
    sampler = RandomSampler(space, seed=seed, steps=(space.config.min_steps, space.config.max_steps), widths=(1, space.config.max_width),
                            family_first=True)
    rng = random.Random(seed)
    out = [Individual(sampler.sample_actions()[1]) for _ in range(n)]
    out += [Individual(decode(space, [rng.randrange(len(space.table)) for _ in range(rng.randint(0, 14))], rng).actions)
            for _ in range(n // 2)]
    return out


def _check(space, ind, replay: bool, run_at_placements: bool) -> None:
    k = ind.kernel
    assert k.is_finished and k.sizes is not None, "a child did not decode to a finished, solved kernel"
    assert ind[-1] == 0 and not ind.fitness.valid
    assert k.steps <= space.config.max_steps
    if k.steps < space.config.min_steps:  # allowed only where nothing else was legal (a spent latency budget)
        before = space.replay(ind[:-1], finish=False)
        assert not space.action_mask(before)[1:].any()
    if replay:  # canonical: every step is legal where it is taken (raises IllegalAction otherwise)
        assert space.replay(ind).steps == k.steps
    if run_at_placements:
        for p in space.placements:
            m = build_module(k, p.c, p.h, p.w)
            x = torch.randn(2, p.c, p.h, p.w, requires_grad=True)
            y = m(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
            y.sum().backward()


def _vary_many(space, n_ops: int, seed: int, every: int, replay_every: int = 1) -> int:
    """``n_ops`` seeded variations; every child is checked, every ``replay_every``-th replayed
    and every ``every``-th built and run at every placement."""
    rng = random.Random(seed)
    parents = _parents(space, seed, 12)
    checked = 0
    for i in range(n_ops):
        a, b = rng.choice(parents).clone(), rng.choice(parents).clone()
        kind = i % 4
        if kind == 0:
            children = mut_step(a, space, rng)
        elif kind == 1:
            children = cx_one_point(a, b, space, rng)
        elif kind == 2:
            children = cx_two_point(a, b, space, rng)
        else:
            children = mut_step(*mut_step(a, space, rng), space, rng)
        for c in children:
            _check(space, c, replay=checked % replay_every == 0, run_at_placements=checked % every == 0)
            checked += 1
        if rng.random() < 0.3:  # let children breed too, so genomes drift away from the sampler's
            parents[rng.randrange(len(parents))] = children[0]
    return checked


def test_dozens_of_variations_finish_and_run(space):
    """The quick version of the test below: 60 variations, every child replayed, every 10th run."""
    assert _vary_many(space, 60, seed=1, every=10) >= 60


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_thousands_of_variations_finish_and_a_subset_runs_at_every_placement():
    """Mutations and crossovers of random genomes always give finished, legal kernels.

    2,000 variations (about 2,700 children) in a small space, then 150 in the default
    task's full space (max_steps 25, width 8): every child is finished and solved, every
    4th replays step by step, every 25th is built and run forward and backward at every
    placement. About 5 minutes of CPU.
    """
    assert _vary_many(small_space(), 2000, seed=2, every=25, replay_every=4) >= 2000
    placements, budget, latency = task_search_setup("fashion_mnist_cnn")
    full = SearchSpace(placements, budget, SpaceConfig(min_steps=5, max_steps=25), latency=latency)
    assert _vary_many(full, 150, seed=3, every=25, replay_every=4) >= 150


def test_mutations_change_insert_and_delete_one_step(space):
    rng = random.Random(0)
    body_lengths = {"insert": [], "delete": [], "change": []}
    for parent in _parents(space, 4, 10):
        n = len(parent) - 1
        for name, op in (("insert", mut_insert_step), ("delete", mut_delete_step), ("change", mut_change_step)):
            (child,) = op(parent.clone(), space, rng)
            if child.repairs == 0:
                body_lengths[name].append(len(child) - 1 - n)
            assert child.origin == "mutation"
    assert set(body_lengths["insert"]) == {1} and set(body_lengths["delete"]) == {-1} and set(body_lengths["change"]) == {0}


def test_variation_is_reproducible_from_the_seed(space):
    def run(seed):
        rng = random.Random(seed)
        parents = _parents(space, 0, 4)
        out = []
        for _ in range(6):
            c1, c2 = cx_two_point(parents[0].clone(), parents[1].clone(), space, rng)
            (m,) = mut_step(parents[2].clone(), space, rng)
            out += [tuple(c1), tuple(c2), tuple(m)]
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def _with_fitness(values, cls=FitnessMax):
    ind = Individual([0], cls)
    ind.fitness.values = values
    return ind


def test_sel_tournament_picks_the_best_of_the_sample_and_uses_only_its_rng():
    pop = [_with_fitness((float(v),)) for v in range(10)]
    state = random.getstate()
    assert all(p is pop[9] for p in sel_tournament(pop, 3, tournsize=10, rng=random.Random(0)))
    picks = sel_tournament(pop, 50, tournsize=2, rng=random.Random(1))
    assert [id(p) for p in picks] == [id(p) for p in sel_tournament(pop, 50, tournsize=2, rng=random.Random(1))]
    assert all(p is not pop[0] for p in picks)  # never the best of two distinct individuals
    assert random.getstate() == state  # DEAP's global RNG is untouched


def test_sel_tournament_dcd_prefers_dominance_then_crowding():
    a, b = _with_fitness((2.0, 2.0), FitnessPareto), _with_fitness((1.0, 1.0), FitnessPareto)
    assert all(p is a for p in sel_tournament_dcd([a, b], 20, random.Random(0)))
    pop = [_with_fitness((float(i), float(5 - i)), FitnessPareto) for i in range(6)]
    tools.selNSGA2(pop, 6)  # assigns crowding distances: the extremes are infinite
    picks = sel_tournament_dcd([pop[0], pop[2]], 20, random.Random(0))
    assert all(p is pop[0] for p in picks)
