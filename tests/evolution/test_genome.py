"""Decoding genomes through the search space, with repair."""

from __future__ import annotations

import pickle
import random

import pytest

from agents.random_sampler import RandomSampler
from evolution.genome import FitnessMax, FitnessPareto, Individual, decode
from kasrl.ir.canonical import kernel_hash
from kasrl.solver.budget import Budget, Placement
from kasrl.space import SearchSpace, SpaceConfig

PLACEMENTS = (Placement(32, 14, 14), Placement(64, 7, 7))


@pytest.fixture(scope="module")
def space():
    return SearchSpace(PLACEMENTS, Budget(flops=1.0, params=1.0, max_tensor=16.0), SpaceConfig(min_steps=3, max_steps=10, max_width=4))


def test_canonical_genomes_decode_without_repair_to_the_same_kernel(space):
    sampler = RandomSampler(space, seed=0, steps=(3, 10), widths=(1, 4))
    for _ in range(10):
        kernel, actions = sampler.sample_actions()
        d = decode(space, actions, random.Random(5))
        assert d.repairs == 0 and d.actions == actions
        assert kernel_hash(d.kernel) == kernel_hash(kernel)


@pytest.mark.parametrize(
    "genome",
    [
        [],  # nothing: grown by seeded legal actions until finishing is legal
        [0, 0, 0],  # finish too early, three times
        [10**6, -3],  # out of range
        [1] * 40,  # forks past the width cap and past max_steps
        list(range(2000, 2060)),  # arbitrary indices, longer than max_steps
    ],
)
def test_any_integer_list_decodes_to_a_finished_canonical_kernel(space, genome):
    d = decode(space, genome, random.Random(0))
    assert d.kernel.is_finished and d.kernel.sizes is not None
    assert d.repairs > 0
    assert d.actions[-1] == 0 and space.config.min_steps <= len(d.actions) - 1 <= space.config.max_steps
    again = decode(space, d.actions, random.Random(99))
    assert again.repairs == 0 and again.actions == d.actions


def test_a_masked_action_moves_to_the_same_template_on_another_branch(space):
    shift_on_3 = space.index("shift", 3, axes="H", offset=1)  # only branch 0 exists
    d = decode(space, [shift_on_3], random.Random(0))
    assert d.actions[0] == space.index("shift", 0, axes="H", offset=1)
    assert d.repairs == 1 + (len(d.actions) - 2)  # the move, plus the actions added to reach min_steps


def test_repairs_are_deterministic_given_the_rng_state(space):
    genome = list(range(300, 2500, 97))
    a, b = decode(space, genome, random.Random(7)), decode(space, genome, random.Random(7))
    assert a.actions == b.actions and a.repairs == b.repairs


def test_individual_clone_pickle_and_dict_round_trip(space):
    d = decode(space, [1, 0], random.Random(0))
    ind = Individual(d.actions, FitnessPareto)
    ind.kernel, ind.uid, ind.hash, ind.objectives = d.kernel, 3, kernel_hash(d.kernel), (2.0, 0.5)
    ind.fitness.values = (2.0, 0.5)
    twin = ind.clone()
    assert twin == ind and twin.kernel is ind.kernel and twin.fitness.values == (2.0, 0.5) and twin.fitness is not ind.fitness
    back = pickle.loads(pickle.dumps(ind))
    assert list(back) == list(ind) and back.uid == 3 and back.kernel is None and back.fitness.values == (2.0, 0.5)
    assert isinstance(back.fitness, FitnessPareto)
    assert not Individual([1, 0], FitnessMax).fitness.valid
