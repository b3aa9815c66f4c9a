"""The matched baseline: random search drawn from exactly the untrained PPO policy's action distribution.

PPO starts from a prior (its factored action head begins near "a family
uniformly, then one of its actions", and its policy network's random weights
tilt that), so comparing PPO with a uniform random sampler measures the prior,
not what PPO learned. :class:`PriorSampler` builds the very policy PPO would
start from (same options, same seed, same environment and masks) and keeps
sampling kernels from it without ever updating it: same prior, same length
distribution. Whatever PPO gains over this baseline it learned.

The evolutions' random start draws from it too (``start: prior``), so they are
matched to the same baseline.

Pseudocode of :meth:`PriorSampler.ask`::

    obs = env.reset()
    loop:
        action ~ policy(obs) restricted to the legal actions   # the untrained policy, stochastic
        if the action ends the episode: return the kernel it finishes
        obs = env.step(action)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th

from kasrl.eval.base import AnalyticEvaluator, EvalResult
from kasrl.strategy import BestTracker, Proposal, Strategy, StrategyContext, make_options

__all__ = ["PriorSampler", "PriorOptions"]


@dataclass
class PriorOptions:
    """Options of the matched baseline (``configs/strategies/random_prior.yaml``)."""

    ppo: dict[str, Any] = field(default_factory=dict)
    """PPO options to match (over ``configs/strategies/ppo.yaml``): the policy's shape (policy, hidden, rounds) decides the prior."""


class PriorSampler(Strategy):
    """Kernels drawn from the untrained PPO policy of the same seed and options (never updated).

    Args:
        context: the space and seed (the seed PPO would be given).
        options: :class:`PriorOptions`.
    """

    name = "random_prior"
    Options = PriorOptions

    def __init__(self, context: StrategyContext, options: PriorOptions | None = None) -> None:
        super().__init__(context, options)
        from agents.ppo import make_agent, make_vec_env

        self.ppo_options = make_options("ppo", self.options.ppo)
        self.venv = make_vec_env(self.space, AnalyticEvaluator(self.space.placements), 1, self.seed, sizes=self.ppo_options.sizes)
        # exactly what PPO builds at this seed (its weights depend only on the seed and the options)
        self.policy = make_agent(self.venv, self.ppo_options, self.seed, self.space).policy
        self.policy.set_training_mode(False)
        self.env = self.venv.envs[0].unwrapped
        self._episodes = 0
        with th.random.fork_rng(devices=[]):
            th.manual_seed(self.seed)
            self._rng = th.get_rng_state()
        self.best = BestTracker()

    def probabilities(self, obs: dict, mask: np.ndarray) -> np.ndarray:
        """The policy's probability of each action in a state (masked actions get 0)."""
        with th.no_grad():
            tensor, _ = self.policy.obs_to_tensor(obs)
            dist = self.policy.get_distribution(tensor, action_masks=mask[None])
            return dist.distribution.probs[0].numpy().astype(np.float64)

    def sample_actions(self) -> tuple:
        """Draw one kernel: ``(finished kernel, action sequence)``."""
        obs, _ = self.env.reset(seed=self.seed * 1_000_003 + self._episodes)
        self._episodes += 1
        actions = []
        with th.random.fork_rng(devices=[]):
            th.set_rng_state(self._rng)
            while True:
                mask = self.env.action_masks()
                with th.no_grad():
                    action, _ = self.policy.predict(obs, action_masks=mask, deterministic=False)
                action = int(action)
                actions.append(action)
                kernel = self.env.peek_kernel(action)
                if kernel is not None:
                    break
                obs, _, terminated, _, _ = self.env.step(action)
                if terminated:  # finishing failed (the solver ran out of time): draw again from scratch
                    obs, _ = self.env.reset()
                    actions = []
            self._rng = th.get_rng_state()
        return kernel, tuple(actions)

    def ask(self) -> Proposal:
        """A kernel from the untrained policy."""
        kernel, actions = self.sample_actions()
        return Proposal(kernel, actions)

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Track the best result (the prior never learns)."""
        self.best.update(result)

    def state_dict(self) -> dict:
        """The sampling RNG and how many episodes were drawn (JSON-able)."""
        return {"rng": self._rng.tolist(), "episodes": self._episodes, "best": self.best.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self._rng = th.tensor(state["rng"], dtype=th.uint8)
        self._episodes = state["episodes"]
        self.best.load_state_dict(state["best"])
