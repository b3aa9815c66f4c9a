"""The search space: one-action legality agrees with the mask; replay reproduces kernels."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agents.random_sampler import RandomSampler
from kasrl.errors import IllegalAction
from kasrl.ir.canonical import kernel_hash
from kasrl.space import SearchSpace, SearchState, SpaceConfig


def test_single_action_legality_agrees_with_the_mask():
    space = SearchSpace(config=SpaceConfig(max_steps=10))
    rng = random.Random(3)
    for _ in range(12):
        g = space.reset()
        while g.steps < rng.randint(1, 9):
            fresh = g.copy()  # the same graph, no caches
            space.oracle.set_witness(fresh, g.witness, g.witness_costs)
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

    from kasrl.ir.graph import KernelGraph
    from kasrl.ir.primitives import Conv
    from kasrl.solver.budget import Budget

    space = SearchSpace(budget=Budget(flops=0.05, params=0.05))
    g = KernelGraph()
    for _ in range(3):  # built by hand, past what the budget allows
        g.apply(Conv(kh=3, kw=3, dilation=1, out="C"), (0,))
    state = space.state(g)
    mask = space.action_mask(state)
    assert mask.dtype == np.int8 and state.successors == {}  # no primitive effect is legal
    s2 = space.apply(space.reset(), 1 + int(np.flatnonzero(space.action_mask(space.reset())[1:])[0]))
    space.action_mask(s2)
    restored = pickle.loads(pickle.dumps(s2))
    assert all(getattr(restored, name) is None for name in SearchState.__slots__[1:])  # the graph only
    assert kernel_hash(restored.graph) == kernel_hash(s2.graph)
    assert np.array_equal(space.action_mask(restored), space.action_mask(s2))


def test_graphs_carry_no_search_caches():
    """The IR is plain data: applying actions leaves nothing of the search on the graph."""
    space = SearchSpace()
    s = space.reset()
    for _ in range(4):
        s = space.apply(s, int([a for a in np.flatnonzero(space.action_mask(s)) if a != 0][0]))
    assert not [k for k in vars(s.graph) if k.startswith("_")]
    assert s.mask is None and s.witness is not None


def _act(space, name, *ops, **attrs):
    return space.index(name, *ops, **attrs)


def test_redundancy_rules_mask_identities_overflows_and_waste():
    space = SearchSpace(config=SpaceConfig(max_steps=10))
    s = space.apply(space.reset(), _act(space, "elementwise", 0, fn="exp"))
    mask = space.action_mask(s)
    assert not mask[_act(space, "elementwise", 0, fn="exp")]  # exp(exp(x)) overflows
    assert mask[_act(space, "elementwise", 0, fn="sin")]
    assert not mask[_act(space, "elementwise", 0, fn="abs")]  # exp is positive: abs is the identity
    assert not space.is_legal(s, _act(space, "elementwise", 0, fn="exp"))  # one-action queries agree
    r = space.apply(space.reset(), _act(space, "activation", 0, fn="relu"))
    mask = space.action_mask(r)
    assert not mask[_act(space, "activation", 0, fn="relu")] and mask[_act(space, "activation", 0, fn="gelu")]
    sh = space.apply(space.reset(), _act(space, "shift", 0, axes="H", offset=1))
    mask = space.action_mask(sh)
    assert not mask[_act(space, "shift", 0, axes="H", offset=-1)] and mask[_act(space, "shift", 0, axes="W", offset=1)]
    sc = space.apply(space.reset(), _act(space, "scale", 0, slot="C"))
    assert not space.action_mask(sc)[_act(space, "scale", 0, slot="C")]
    f = space.apply(space.reset(), _act(space, "fork", 0))
    mask = space.action_mask(f)
    assert not mask[_act(space, "binary", 0, 1, op="sub")]  # x - x is zero
    assert mask[_act(space, "bmm", 0, 1, contract="C", softmax=False)]  # x x^T (attention-like) is allowed
    f2 = space.apply(f, _act(space, "activation", 1, fn="gelu"))
    assert space.action_mask(f2)[_act(space, "binary", 0, 1, op="sub")]  # different tensors now


def test_groups_have_at_least_two_members_everywhere():
    from kasrl.ir.sizes import evaluate

    space = SearchSpace(config=SpaceConfig(max_steps=6))
    rng = random.Random(0)
    groups = 0
    for _ in range(40):
        kernel, _ = RandomSampler(space, seed=rng.randrange(10**6), steps=(1, 6), family_first=True).sample_actions()
        for node in kernel.nodes:
            if node.op == "group":
                groups += 1
                for p in space.placements:
                    assert evaluate(node.shape[0], kernel.sizes, p.c, p.h, p.w) >= 2
    assert groups > 0
