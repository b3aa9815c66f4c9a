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


def test_a_state_that_cannot_be_finished_gets_a_mask_without_effects_and_pickles_without_caches():
    import pickle

    from kasrl.ir.primitives import Conv
    from kasrl.solver.budget import Budget

    space = SearchSpace(budget=Budget(flops=0.05, params=0.05))
    g = space.reset()
    for _ in range(3):  # built by hand, past what the budget allows
        g.apply(Conv(kh=3, kw=3, dilation=1, out="C"), (0,))
    for attr in ("_mask", "_succ", "_witness", "_witness_costs", "_lb", "_slack", "_single", "_domains"):
        g.__dict__.pop(attr, None)
    mask = space.action_mask(g)
    assert mask.dtype == np.int8 and g._succ == {}  # no primitive effect is legal
    g2 = space.apply(space.reset(), 1 + int(np.flatnonzero(space.action_mask(space.reset())[1:])[0]))
    space.action_mask(g2)
    restored = pickle.loads(pickle.dumps(g2))
    assert not [k for k in restored.__dict__ if k.startswith("_")]
    assert kernel_hash(restored) == kernel_hash(g2) and np.array_equal(space.action_mask(restored), space.action_mask(g2))
