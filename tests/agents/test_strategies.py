"""The strategy registry, the matched baseline's distribution and MCTS."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult, Evaluator
from kasrl.ir.canonical import kernel_hash
from kasrl.solver.budget import Budget, Placement
from kasrl.space import SearchSpace, SpaceConfig
from kasrl.store.records import Status
from kasrl.strategy import StrategyContext, make_strategy, strategy_names, strategy_spec

TINY = (Placement(8, 6, 6), Placement(16, 3, 3))


def _space(**cfg) -> SearchSpace:
    base = {"min_steps": 1, "max_steps": 4, "max_width": 2}
    return SearchSpace(TINY, Budget(flops=2.0, params=2.0), SpaceConfig(**{**base, **cfg}))


def test_every_registered_strategy_builds_and_proposes_a_legal_kernel():
    space = _space()
    names = strategy_names()
    assert {"random", "random_family", "random_prior", "ppo", "aging", "mu_plus_lambda", "nsga2", "mcts"} <= set(names)
    for name in names:
        options = {"n_envs": 1, "n_steps": 4, "batch_size": 4, "hidden": 8} if name == "ppo" else {}
        s = make_strategy(name, StrategyContext(space, 0), options)
        (p,) = s.ask_many(1)
        assert p.kernel.is_finished and p.kernel.sizes is not None, name
        s.close()


def test_an_unknown_strategy_or_option_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=re.escape("unknown strategy 'nsga3'; did you mean 'nsga2'?; known: ")) as e:
        strategy_spec("nsga3")
    assert "\n" not in str(e.value) and "random_prior" in str(e.value)
    with pytest.raises(ConfigError, match=re.escape("`options.popsize` of strategy 'aging'")):
        make_strategy("aging", StrategyContext(_space()), {"popsize": 3})


@pytest.mark.slow
def test_the_matched_baseline_draws_from_the_untrained_policys_distribution():
    """Chi-square goodness of fit of the first action over 600 draws against PPO's own
    initial policy at the same seed (and, as a check that the test can fail, against
    the uniform distribution over legal actions, which it rejects)."""
    from scipy.stats import chisquare

    from agents.ppo import make_agent, make_vec_env
    from kasrl.eval.base import AnalyticEvaluator
    from kasrl.strategy import make_options

    space = _space(max_steps=2, families=("activation", "elementwise", "fold", "projection", "scale", "fork"))
    prior = make_strategy("random_prior", StrategyContext(space, 7))
    counts = Counter(prior.sample_actions()[1][0] for _ in range(600))
    venv = make_vec_env(space, AnalyticEvaluator(space.placements), 1, 0)
    agent = make_agent(venv, make_options("ppo"), 7, space)  # what PPO starts from at seed 7
    obs = venv.reset()
    mask = venv.env_method("action_masks")[0]
    import torch

    with torch.no_grad():
        tensor, _ = agent.policy.obs_to_tensor({k: v[0] for k, v in obs.items()})
        probs = agent.policy.get_distribution(tensor, action_masks=mask[None]).distribution.probs[0].numpy()
    legal = np.flatnonzero(mask)
    assert set(counts) <= set(legal.tolist())  # never a masked action

    def p_value(expected_probs):
        # pool rare actions so every expected count is at least 5
        exp = expected_probs[legal].astype(np.float64)
        exp = exp / exp.sum() * 600
        obs_counts = np.array([counts.get(int(a), 0) for a in legal], dtype=float)
        order = np.argsort(exp)
        pooled_e, pooled_o, acc_e, acc_o = [], [], 0.0, 0.0
        for i in order:
            acc_e += exp[i]
            acc_o += obs_counts[i]
            if acc_e >= 5:
                pooled_e.append(acc_e)
                pooled_o.append(acc_o)
                acc_e = acc_o = 0.0
        if acc_e:
            pooled_e[-1] += acc_e
            pooled_o[-1] += acc_o
        pooled_e = np.array(pooled_e) * (sum(pooled_o) / sum(pooled_e))  # exact totals (float rounding)
        return chisquare(pooled_o, pooled_e).pvalue

    assert p_value(probs) > 1e-3
    uniform = np.where(mask > 0, 1.0, 0.0)
    assert p_value(uniform) < 1e-6


class _Planted(Evaluator):
    """Reward: how many of the kernel's first primitives match a planted sequence (the optimum: all of them)."""

    fidelity = "analytic"

    def __init__(self, target: list) -> None:
        self.target = target
        self.calls = 0

    def evaluate(self, kernel) -> EvalResult:
        self.calls += 1
        labels = [n.prim.label() for n in kernel.nodes[1:] if not n.closing]
        match = 0
        for a, b in zip(labels, self.target, strict=False):
            if a != b:
                break
            match += 1
        reward = match - 0.1 * max(len(labels) - len(self.target), 0)
        return EvalResult(Status.OK, float(reward), kernel_hash=kernel_hash(kernel), fidelity="analytic")


def test_mcts_finds_a_planted_optimum_and_never_takes_an_illegal_action():
    space = _space(max_steps=3, families=("activation", "elementwise", "fold", "scale", "softmax"))
    target = ["activation[gelu]", "softmax[C]", "elementwise[sin]"]
    ev = _Planted(target)
    mcts = make_strategy("mcts", StrategyContext(space, 3))
    found_at = None
    for i in range(250):
        p = mcts.ask()
        r = ev.evaluate(p.kernel)
        replayed = space.replay(p.actions)  # every action was legal where it was taken
        assert kernel_hash(replayed) == r.kernel_hash
        mcts.tell(p, r)
        if r.reward >= len(target):
            found_at = i + 1
            break
    assert found_at is not None and found_at <= 250, "MCTS did not find the planted optimum"
