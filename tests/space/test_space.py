"""The search space: one-action legality agrees with the mask; replay reproduces kernels."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agents.random_sampler import RandomSampler
from kasrl.errors import IllegalAction
from kasrl.ir.canonical import kernel_hash
from kasrl.space import SearchSpace, SpaceConfig


def test_single_action_legality_agrees_with_the_mask():
    space = SearchSpace(config=SpaceConfig(max_steps=10))
    rng = random.Random(3)
    for _ in range(12):
        g = space.reset()
        while g.steps < rng.randint(1, 9):
            fresh = g.copy()
            space.oracle.set_witness(fresh, g._witness, g._witness_costs)
            one = [space.is_legal(fresh, a) for a in range(space.n_actions)]  # before any mask exists
            mask = space.action_mask(g)
            assert one == [bool(m) for m in mask]
            legal = [int(a) for a in np.flatnonzero(mask) if a != 0]
            g = space.apply(g, rng.choice(legal))


def test_replay_reproduces_a_kernel_and_rejects_a_masked_action():
    space = SearchSpace()
    kernel, actions = RandomSampler(space, seed=5).sample_actions()
    assert kernel_hash(space.replay(actions)) == kernel_hash(kernel)
    g = space.reset()
    bad = int(np.flatnonzero(space.action_mask(g) == 0)[0])
    with pytest.raises(IllegalAction, match=f"action {bad} "):
        space.replay([bad])
