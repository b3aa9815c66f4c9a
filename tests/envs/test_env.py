"""The kernel-construction environment."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from kasrl.errors import IllegalAction
from kasrl.solver.budget import RESNET18_PLACEMENTS


def test_registered_and_passes_the_gymnasium_checker():
    env = gym.make(envs.ENV_ID, invalid_action="penalize", max_steps=8)
    # check_env draws unmasked actions; "penalize" keeps the state and pays a penalty
    check_env(env.unwrapped, skip_render_check=True)
    assert isinstance(env.unwrapped, envs.KernelConstructionEnv)


def test_sample_is_always_legal_and_masks_are_never_empty():
    env = gym.make(envs.ENV_ID, max_steps=10)
    env.action_space.seed(3)
    for ep in range(12):
        obs, info = env.reset(seed=ep)
        done = False
        while not done:
            mask = info["action_mask"]
            assert mask.dtype == np.int8 and mask.any()
            assert np.array_equal(mask, env.unwrapped.action_masks())
            for key, space in env.observation_space.spaces.items():
                assert space.contains(obs[key]), key
                assert np.isfinite(obs[key]).all()
            a = env.action_space.sample()
            assert mask[a] == 1
            obs, reward, done, trunc, info = env.step(a)
            assert not trunc
        assert info["status"] == "ok" and np.isfinite(reward)
        assert info["kernel"]["version"] == 1 and len(info["kernel_hash"]) == 64


def test_a_masked_action_raises_and_leaves_the_state_alone():
    env = gym.make(envs.ENV_ID).unwrapped
    env.reset(seed=0)
    mask = env.action_masks()
    bad = int(np.flatnonzero(mask == 0)[0])
    before = env.state.describe()
    with pytest.raises(IllegalAction, match=re.escape(f"action {bad} (")):
        env.step(bad)
    assert env.state.describe() == before and env.state.steps == 0
    with pytest.raises(IllegalAction, match="out of range"):
        env.step(10**6)
    good = int(np.flatnonzero(mask)[-1])
    env.step(good)  # still usable


def test_step_cap_finishes_the_kernel():
    env = gym.make(envs.ENV_ID, max_steps=3).unwrapped
    env.reset(seed=1)
    done, steps = False, 0
    while not done:
        mask = env.action_masks().copy()
        mask[0] = 0 if mask[1:].any() else mask[0]  # never choose finish
        _, _, done, _, info = env.step(int(np.flatnonzero(mask)[0]))
        steps += 1
    assert steps == 3 and info["status"] == "ok"


def test_same_seed_same_kernels():
    def kernels(seed):
        env = gym.make(envs.ENV_ID, max_steps=8)
        env.action_space.seed(seed)
        out = []
        for ep in range(4):
            _, info = env.reset(seed=seed + ep)
            done = False
            while not done:
                _, _, done, _, info = env.step(env.action_space.sample())
            out.append(info["kernel_hash"])
        return out

    assert kernels(5) == kernels(5)
    assert kernels(5) != kernels(6)


def test_render_ansi_and_a_broken_evaluator_becomes_a_penalty():
    from kasrl.eval.base import Evaluator

    class Broken(Evaluator):
        fidelity = "broken"

        def evaluate(self, kernel):
            raise RuntimeError("boom")

    env = gym.make(envs.ENV_ID, max_steps=2, render_mode="ansi", evaluator=Broken())
    env.reset(seed=0)
    assert "%0 = input" in env.render()
    done = False
    while not done:
        _, reward, done, _, info = env.step(env.action_space.sample())
    assert info["status"] == "crash" and "boom" in info["cause"] and reward < 0


def test_default_placements_are_resnet18():
    env = gym.make(envs.ENV_ID).unwrapped
    assert env.space.placements == RESNET18_PLACEMENTS


def test_incremental_observations_equal_observations_built_from_scratch():
    from envs.kernel_construction import _GraphObserver

    env = gym.make(envs.ENV_ID).unwrapped
    env.action_space.seed(2)
    kept, snapshots = [], []
    for ep in range(5):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            kept.append(obs)
            snapshots.append({k: v.copy() for k, v in obs.items()})
            obs, _, done, _, _ = env.step(env.action_space.sample())
            g = env.kernel if done else env.state.graph
            fresh = _GraphObserver(env.max_nodes).update(g)
            for key, arr in zip(("nodes", "adjacency", "node_mask"), fresh, strict=False):
                assert np.array_equal(obs[key], arr), key
    # observations handed out earlier are not changed by later steps
    for obs, snap in zip(kept, snapshots, strict=False):
        assert all(np.array_equal(obs[k], snap[k]) for k in snap)


def test_first_legal_sizes_finish_every_episode_and_bad_options_are_named():
    env = gym.make(envs.ENV_ID, sizes="feasible", max_steps=12)
    env.action_space.seed(4)
    for ep in range(15):
        env.reset(seed=ep)
        done = False
        while not done:
            _, reward, done, _, info = env.step(env.action_space.sample())
        assert info["status"] == "ok" and info["kernel"]["sizes"] is not None and np.isfinite(reward)
    with pytest.raises(Exception, match="`sizes` must be one of fill, max_flops, max_capacity, feasible"):
        gym.make(envs.ENV_ID, sizes="fast")


def test_a_mask_handed_out_cannot_corrupt_the_next_episode():
    env = gym.make(envs.ENV_ID).unwrapped
    _, info = env.reset(seed=0)
    expected = info["action_mask"].copy()
    info["action_mask"][:] = 0
    env.action_masks()[:] = 0
    _, info = env.reset(seed=1)
    assert np.array_equal(info["action_mask"], expected)
