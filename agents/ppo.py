"""PPO agents that learn to build kernels: sb3-contrib ``MaskablePPO`` on the kernel-construction env.

Pseudocode of a training run (``python train_agent.py``, :class:`PPOStrategy`)::

    envs  = n_envs copies of KernelConstruction-v0, sharing the run's search space and budget
    agent = KernelPPO("GraphPolicy", envs)       # graph network -> masked action logits, value
    repeat until the budget is spent:            # StopOnBudget ends learn()
        roll out n_steps per env, masks from env.action_masks()
        every finished episode = one evaluation (its kernel's reward is the episode's reward):
            the kernels of the episodes ending on one step are one round of ask / tell
        PPO update: n_epochs over the rollout in minibatches

>>> from sb3_contrib import MaskablePPO
>>> issubclass(KernelPPO, MaskablePPO) and "GraphPolicy" in KernelPPO.policy_aliases
True
"""

from __future__ import annotations

import io
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.features import FactoredActionHead, GraphFeaturesExtractor, action_index
from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult, Evaluator
from kasrl.experiment.budget import BudgetExhausted
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.graph import KernelGraph
from kasrl.space.space import SIZE_OBJECTIVES
from kasrl.strategy import Proposal, Strategy, StrategyContext

__all__ = [
    "PPOOptions",
    "PPOStrategy",
    "GraphPolicy",
    "KernelPPO",
    "BudgetGuard",
    "RepeatPenalty",
    "PendingResult",
    "EvaluateTogetherVecEnv",
    "make_vec_env",
    "make_agent",
    "agent_state",
    "restore_agent",
]

AGENT_FILE = "ppo_agent.zip"

SelfKernelPPO = TypeVar("SelfKernelPPO", bound="KernelPPO")
POLICIES = {"graph": "GraphPolicy", "mlp": "MultiInputPolicy"}


# -- config ----------------------------------------------------------------------------------
@dataclass
class PPOOptions:
    """PPO hyperparameters (``options.*`` of a run with ``strategy: ppo``; defaults in ``configs/strategies/ppo.yaml``)."""

    n_envs: int = 4
    """Environments stepped together (DummyVecEnv); each finished episode costs one evaluation."""
    n_steps: int = 16
    """Env steps per environment between updates (an update sees n_envs * n_steps steps)."""
    batch_size: int = 32
    """Minibatch size of an update (env steps)."""
    n_epochs: int = 4
    """Passes over each rollout per update."""
    learning_rate: float = 1e-3
    """Adam step size (constant)."""
    gamma: float = 1.0
    """Discount per env step (the only reward comes at the end of an episode)."""
    gae_lambda: float = 0.95
    """GAE bias/variance trade-off (1: Monte-Carlo returns)."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus in the loss (nats)."""
    clip_range: float = 0.2
    """PPO's clipping of the probability ratio (fraction)."""
    hidden: int = 64
    """Width of node embeddings and of the policy and value layers (units)."""
    rounds: int = 2
    """Message-passing rounds of the graph policy (hops)."""
    policy: str = "graph"
    """graph (message passing over the kernel graph) | mlp (an MLP over the flattened padded arrays)."""
    repeat_penalty: float = 1.0
    """Subtracted from the reward of an episode whose kernel the run already evaluated (reward units; 0: off)."""
    sizes: str = "fill"
    """How a finished kernel is sized (see SearchSpace.finish; ``feasible`` is faster when the reward ignores sizes)."""


    def validate(self) -> None:
        """Check values that types alone do not catch.

        Raises:
            ConfigError: naming the key.
        """
        p = self
        for key in ("n_envs", "n_steps", "batch_size", "n_epochs", "hidden"):
            if getattr(p, key) < 1:
                raise ConfigError(f"`options.{key}` must be at least 1, got {getattr(p, key)}")
        if p.n_envs * p.n_steps < 2:
            raise ConfigError(f"`options.n_steps` * `options.n_envs` must be at least 2, got {p.n_steps} * {p.n_envs}")
        if p.batch_size > p.n_envs * p.n_steps:
            raise ConfigError(f"`options.batch_size` {p.batch_size} exceeds a rollout "
                              f"(options.n_envs * options.n_steps = {p.n_envs * p.n_steps})")
        if p.rounds < 0:
            raise ConfigError(f"`options.rounds` must be >= 0, got {p.rounds}")
        if not p.learning_rate > 0:
            raise ConfigError(f"`options.learning_rate` must be positive, got {p.learning_rate}")
        for key in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(p, key) <= 1.0:
                raise ConfigError(f"`options.{key}` must be in [0, 1], got {getattr(p, key)}")
        if p.ent_coef < 0 or not p.clip_range > 0:
            raise ConfigError(f"`options.ent_coef` must be >= 0 and `options.clip_range` > 0, got {p.ent_coef} and {p.clip_range}")
        if p.policy not in POLICIES:
            raise ConfigError(f"`options.policy` must be one of {sorted(POLICIES)}, got {p.policy!r}")
        if p.sizes not in SIZE_OBJECTIVES:
            raise ConfigError(f"`options.sizes` must be one of {', '.join(SIZE_OBJECTIVES)}, got {p.sizes!r}")
        if p.repeat_penalty < 0:
            raise ConfigError(f"`options.repeat_penalty` must be >= 0, got {p.repeat_penalty}")


# -- policy and algorithm --------------------------------------------------------------------
class GraphPolicy(MaskableMultiInputActorCriticPolicy):
    """A masked actor-critic over the kernel graph: :class:`GraphFeaturesExtractor` -> MLPs -> logits, value.

    Takes the parent's arguments; ``features_extractor_class`` defaults to the
    graph network. With ``action_index`` (:func:`~agents.features.action_index`
    of the env's search space) the action head is a
    :class:`~agents.features.FactoredActionHead`, which shares what actions of
    the same family, template or operand have in common.
    """

    def __init__(self, *args: Any, action_index: np.ndarray | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", GraphFeaturesExtractor)
        object.__setattr__(self, "action_index", None if action_index is None else np.asarray(action_index, dtype=np.int16))
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if self.action_index is not None:
            if len(self.action_index) != self.action_space.n:
                raise ValueError(f"`action_index` has {len(self.action_index)} rows for {self.action_space.n} actions")
            self.action_net = FactoredActionHead(self.mlp_extractor.latent_dim_pi, self.action_index)
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict:
        return {**super()._get_constructor_parameters(), "action_index": self.action_index}


class KernelPPO(MaskablePPO):
    """``MaskablePPO`` with defaults for expensive, end-of-episode rewards.

    PPO: Schulman et al. 2017, arXiv 1707.06347; invalid-action masking: Huang and
    Ontañón 2020, arXiv 2006.14171; the algorithm is sb3-contrib's, unchanged.
    Rewards cost seconds each, so rollouts are short (``n_steps`` per env) and
    updates small (a tiny network, few epochs). Masks are used at training time
    (sb3-contrib reads ``env.action_masks()``) and must be passed at prediction
    time: ``agent.predict(obs, action_masks=env.action_masks())``.

    ``policy`` is a class or a name from :attr:`policy_aliases`: ``"GraphPolicy"``
    (message passing over the kernel graph), or sb3-contrib's ``"MultiInputPolicy"``
    (an MLP over the flattened padded arrays).

    Args:
        policy: the policy class or its alias.
        env: the (vectorised) kernel-construction env.
        learning_rate: Adam step size.
        n_steps: env steps per env between updates.
        batch_size: minibatch size (env steps).
        n_epochs: passes over each rollout per update.
        gamma: discount per env step.
        gae_lambda: GAE's lambda.
        ent_coef: weight of the entropy bonus.
        clip_range: PPO's ratio clipping.
        hidden: width of node embeddings and of the policy/value layers (units);
            ignored for the parts ``policy_kwargs`` sets itself.
        rounds: message-passing rounds (``GraphPolicy`` only).
        policy_kwargs: passed to the policy; merged over the defaults that
            ``hidden`` and ``rounds`` imply.
        seed: seeds the policy's sampling.
        device: where the networks live (a tiny net: ``"cpu"`` is fastest).
        **kwargs: other :class:`~sb3_contrib.MaskablePPO` arguments.

    Raises:
        ValueError: for a non-positive ``hidden``, ``n_steps``, ``batch_size`` or ``n_epochs``.
    """

    policy_aliases: ClassVar[dict] = {**MaskablePPO.policy_aliases, "GraphPolicy": GraphPolicy}

    def __init__(
        self,
        policy: str | type = "GraphPolicy",
        env: Any = None,
        learning_rate: float = 1e-3,
        n_steps: int = 16,
        batch_size: int = 32,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.01,
        clip_range: float = 0.2,
        hidden: int = 64,
        rounds: int = 2,
        policy_kwargs: dict | None = None,
        seed: int | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        for name, value in (("hidden", hidden), ("n_steps", n_steps), ("batch_size", batch_size), ("n_epochs", n_epochs)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        defaults: dict = {"net_arch": {"pi": [hidden], "vf": [hidden]}}
        if policy in ("GraphPolicy", GraphPolicy):
            defaults["features_extractor_kwargs"] = {"hidden": hidden, "rounds": rounds}
        else:
            defaults["net_arch"] = {"pi": [hidden, hidden], "vf": [hidden, hidden]}
        self.hidden = hidden
        self.rounds = rounds
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            clip_range=clip_range,
            policy_kwargs={**defaults, **(policy_kwargs or {})},
            seed=seed,
            device=device,
            **kwargs,
        )

    def _setup_model(self) -> None:
        # The env's MaskedDiscrete holds a bound method of the env (its ``sample()``
        # draws a legal action); a plain Discrete keeps the saved model small and
        # free of the env. Masks come from ``env.action_masks()`` either way.
        if isinstance(self.action_space, spaces.Discrete) and type(self.action_space) is not spaces.Discrete:
            self.action_space = spaces.Discrete(int(self.action_space.n), start=int(self.action_space.start))
        super()._setup_model()

    def learn(
        self: SelfKernelPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "KernelPPO",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfKernelPPO:
        """Train for ``total_timesteps`` env steps or until a callback stops it; returns ``self``."""
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, use_masking, progress_bar)


# -- environments ----------------------------------------------------------------------------
class BudgetGuard(gym.Wrapper):
    """Truncates the episode, without touching the env, once the run's budget is spent.

    Several envs share one budget: when one env's episode spends the last
    evaluation, the others must not ask for another (the evaluator would raise
    ``BudgetExhausted`` and the env would turn that into a crash penalty). A
    guarded step then returns the last observation, reward 0, ``truncated=True``
    and ``info["budget_exhausted"] = True``; training stops on that same step
    (:class:`agents.callbacks.StopOnBudget`), so no such step reaches an update
    and no such episode is counted.

    Args:
        env: the kernel-construction env (possibly wrapped).
        evaluator: the env's :class:`PendingResult` (its ``.exhausted`` counts a result waiting for this env).
    """

    def __init__(self, env: gym.Env, evaluator: Any) -> None:
        super().__init__(env)
        self.evaluator = evaluator
        self._last_obs: Any = None
        self._mask: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple:
        """Reset the wrapped env."""
        obs, info = self.env.reset(**kwargs)
        self._last_obs, self._mask = obs, info.get("action_mask")
        return obs, info

    def step(self, action: Any) -> tuple:
        """Step the wrapped env, unless the budget is spent."""
        if self.evaluator.exhausted and self._last_obs is not None:
            return self._last_obs, 0.0, False, True, {"action_mask": self.action_masks(), "budget_exhausted": True}
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs, self._mask = obs, info.get("action_mask")
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """The legal actions now (sb3-contrib reads this).

        The env puts the mask of the state it returns in ``info``; reusing it
        saves computing every mask twice.
        """
        if self._mask is None:
            self._mask = self.env.unwrapped.action_masks()
        return self._mask


class RepeatPenalty(gym.Wrapper):
    """Lowers the reward of an episode that rebuilt a kernel the run has already evaluated.

    Every evaluation costs budget, cache hits included, so a search policy that
    settles on one kernel wastes the rest of its budget. Subtracting ``penalty``
    from a repeat's reward makes PPO spread its probability around what it found
    (the nearby kernels are new) instead of re-drawing it; on the analytic reward
    this is what lets it climb out of a local optimum (see
    ``bench/ppo_vs_random.py``). ``info["repeat"]`` says whether the kernel was
    seen before.

    Args:
        env: the kernel-construction env (possibly wrapped).
        seen: kernel hashes evaluated so far; shared by all envs of a run
            (and filled from the history on resume).
        penalty: subtracted from a repeat's reward (reward units; 0 turns it off).
    """

    def __init__(self, env: gym.Env, seen: set, penalty: float) -> None:
        super().__init__(env)
        self.seen = seen
        self.penalty = penalty

    def step(self, action: Any) -> tuple:
        """Step the wrapped env; at the end of an episode, check the kernel against those seen."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        h = info.get("kernel_hash") if terminated else None
        if h:
            info["repeat"] = h in self.seen
            if info["repeat"]:
                reward = float(reward) - self.penalty
            self.seen.add(h)
        return obs, reward, terminated, truncated, info


class PendingResult(Evaluator):
    """One env's view of the run's evaluator: a result evaluated ahead of ``step`` is used once.

    :class:`EvaluateTogetherVecEnv` evaluates the kernels of the episodes that
    end on one step as a batch and leaves each env its result here; the env's
    own ``evaluate`` call then takes it instead of spending another unit.

    Args:
        inner: the run's budgeted evaluator (shared by all envs).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fidelity = inner.fidelity
        self.pending: tuple | None = None  # (kernel hash, EvalResult)

    @property
    def exhausted(self) -> bool:
        """True when the budget is spent and no result is waiting for this env."""
        return self.pending is None and self.inner.exhausted

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """The waiting result for ``kernel``, else a fresh evaluation."""
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == kernel_hash(kernel):
            return pending[1]
        return self.inner.evaluate(kernel)


class EvaluateTogetherVecEnv(DummyVecEnv):
    """A ``DummyVecEnv`` that evaluates the kernels of episodes ending on the same step concurrently.

    Before stepping, it asks every env which kernel its action would finish
    (``peek_kernel``) and sends those kernels to the run's evaluator in one
    ``evaluate_many`` call, which an executor with several workers (process
    pool, Ray) runs in parallel; then the envs step as usual and pick up their
    results (:class:`PendingResult`). With one worker, or one ending episode,
    it behaves exactly like ``DummyVecEnv``.

    Args:
        env_fns: env constructors; each env's evaluator must be a :class:`PendingResult` over ``evaluator``.
        evaluator: the run's budgeted evaluator.
    """

    def __init__(self, env_fns: list, evaluator: Any) -> None:
        super().__init__(env_fns)
        self.evaluator = evaluator

    def step_wait(self) -> tuple:
        """Evaluate the ending episodes' kernels together, then step every env."""
        self._evaluate_ending()
        return super().step_wait()

    def _evaluate_ending(self) -> None:
        if self.evaluator.exhausted or len(self.envs) < 2:
            return
        ending = []
        for env, action in zip(self.envs, self.actions, strict=False):
            base = env.unwrapped
            kernel = base.peek_kernel(int(action))
            if kernel is not None:
                ending.append((base.evaluator, kernel))
        if len(ending) < 2:
            return
        try:
            results = self.evaluator.evaluate_many([k for _, k in ending])  # up to the remaining budget
        except BudgetExhausted:  # the time ran out while peeking: the guards truncate these episodes
            return
        for (proxy, kernel), result in zip(ending, results, strict=False):
            proxy.pending = (kernel_hash(kernel), result)


def make_vec_env(space: Any, evaluator: Any, n_envs: int, seed: int = 0, repeat_penalty: float = 0.0,
                 seen: set | None = None, sizes: str = "fill") -> EvaluateTogetherVecEnv:
    """``n_envs`` kernel-construction envs sharing one search space and one budgeted evaluator.

    Each env is ``BudgetGuard(RepeatPenalty(Monitor(KernelConstruction-v0)))``:
    the monitor feeds SB3's episode statistics (``rollout/ep_rew_mean``, the
    kernels' own rewards), the repeat penalty is what PPO learns from, and the
    guard stops at the budget. Episodes that end on the same step are evaluated
    together (:class:`EvaluateTogetherVecEnv`).

    Args:
        space: the run's :class:`~kasrl.space.SearchSpace` (its caches are shared).
        evaluator: the run's budgeted evaluator (every env spends the same budget);
            the kernels of its ``history`` count as seen.
        n_envs: number of envs (stepped one after the other; their ending kernels evaluated together).
        seed: seed of the first env's first reset (the others get ``seed + i``).
        repeat_penalty: see :class:`RepeatPenalty`.
        seen: the set of kernel hashes seen so far (shared, filled as episodes end;
            default: the hashes of ``evaluator.history``).
        sizes: how finished kernels are sized (the env's ``sizes``).

    Raises:
        ValueError: when ``n_envs`` is below 1.
    """
    import envs  # noqa: F401 - registers kasrl/KernelConstruction-v0

    if n_envs < 1:
        raise ValueError(f"`n_envs` must be at least 1, got {n_envs}")
    if seen is None:
        seen = {row["hash"] for row in getattr(evaluator, "history", ()) if row.get("hash")}

    def make() -> gym.Env:
        own = PendingResult(evaluator)
        env = Monitor(gym.make(envs.ENV_ID, space=space, evaluator=own, sizes=sizes))
        return BudgetGuard(RepeatPenalty(env, seen, repeat_penalty), own)

    venv = EvaluateTogetherVecEnv([make] * n_envs, evaluator)
    venv.seed(seed)
    return venv


# -- building, saving and restoring an agent --------------------------------------------------
_TRAINING_KEYS = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "clip_range")


def _training_kwargs(opts: PPOOptions) -> dict:
    return {k: getattr(opts, k) for k in _TRAINING_KEYS}


def make_agent(venv: Any, opts: PPOOptions, seed: int = 0, space: Any = None) -> KernelPPO:
    """A fresh :class:`KernelPPO` on ``venv`` with the hyperparameters of ``opts``.

    With the env's ``space``, the graph policy gets the factored action head.
    """
    kwargs = {}
    if opts.policy == "graph" and space is not None:
        kwargs["policy_kwargs"] = {"action_index": action_index(space)}
    return KernelPPO(POLICIES[opts.policy], venv, hidden=opts.hidden, rounds=opts.rounds, seed=seed, **kwargs, **_training_kwargs(opts))


def agent_state(agent: KernelPPO, opts: PPOOptions) -> dict:
    """Everything needed to continue training: the SB3 model file (bytes) and the RNG states."""
    buf = io.BytesIO()
    agent.save(buf)
    return {
        "model_zip": buf.getvalue(),
        "policy": opts.policy,
        "hidden": opts.hidden,
        "rounds": opts.rounds,
        "num_timesteps": agent.num_timesteps,
        "rng": {"torch": th.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def restore_agent(state: dict, venv: Any, opts: PPOOptions) -> KernelPPO:
    """The agent of :func:`agent_state`, on ``venv``, with ``opts``' training hyperparameters.

    Training hyperparameters (learning rate, ``n_steps``...) may change on resume;
    the network's shape may not.

    Raises:
        ConfigError: when ``options.policy``, ``options.hidden`` or ``options.rounds`` differ from the saved agent's.
    """
    for key in ("policy", "hidden", "rounds"):
        if state[key] != getattr(opts, key):
            raise ConfigError(f"`options.{key}` is {getattr(opts, key)!r} but the checkpoint's agent has {state[key]!r}; "
                              "the network cannot change on resume")
    agent = KernelPPO.load(io.BytesIO(state["model_zip"]), env=venv, device="cpu", **_training_kwargs(opts))
    rng = state["rng"]
    th.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return agent


# -- the strategy -------------------------------------------------------------------------------
class _Handoff(Evaluator):
    """The evaluator the PPO thread's environments see: kernels go to the strategy's
    ``ask``; results come back from its ``tell`` (see :class:`PPOStrategy`)."""

    fidelity = "handoff"

    def __init__(self, strategy: PPOStrategy) -> None:
        self.strategy = strategy

    @property
    def exhausted(self) -> bool:
        """True once the run's budget is spent or the strategy is closing."""
        s = self.strategy
        return s._stopping or (s.context.budget is not None and s.context.budget.exhausted)

    @property
    def remaining(self) -> int:
        """Evaluations left in the run's budget."""
        budget = self.strategy.context.budget
        return 0 if self.exhausted else (budget.remaining if budget is not None else 2**31)

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        return self.evaluate_many([kernel])[0]

    def evaluate_many(self, kernels: Any) -> list:
        """Results for the first kernels the budget allows (the others are not evaluated).

        Raises:
            BudgetExhausted: when none can be evaluated.
        """
        take = list(kernels)[: self.remaining]
        if not take:
            raise BudgetExhausted("the run's budget is spent")
        return self.strategy._submit(take)


class PPOStrategy(Strategy):
    """PPO (sb3-contrib ``MaskablePPO``) as an ask/tell strategy.

    PPO collects its own rollouts, so it runs in a thread of its own: the kernels
    of the episodes that end on one step are handed to :meth:`ask_many` as one
    round, and the thread waits until their results come back through
    :meth:`tell` and the next round is asked for. The thread only ever runs while
    the caller waits in ``ask_many``, so the search stays deterministic and the
    agent can be saved between rounds. :meth:`close` stops the thread (its
    environments see the budget spent and truncate).

    Options: :class:`PPOOptions` (``configs/strategies/ppo.yaml``).
    """

    name = "ppo"
    Options = PPOOptions

    def __init__(self, context: StrategyContext, options: PPOOptions | None = None) -> None:
        super().__init__(context, options)
        self.seen: set = set()
        self._handoff = _Handoff(self)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._batch: list = []  # proposals of the round the thread waits on
        self._given = 0
        self._told: dict = {}
        self._resume = False
        self._stopping = False
        self._done = False
        self._error: BaseException | None = None
        self._fresh = True
        self._build(None)

    def _build(self, state: dict | None) -> None:
        opts, ctx = self.options, self.context
        spent = ctx.budget.spent if ctx.budget is not None else 0
        self.venv = make_vec_env(self.space, self._handoff, opts.n_envs, self.seed + spent, opts.repeat_penalty, seen=self.seen,
                                 sizes=opts.sizes)
        self.agent = restore_agent(state, self.venv, opts) if state else make_agent(self.venv, opts, self.seed, self.space)

    # -- the thread -------------------------------------------------------------------------
    def _learn(self) -> None:
        from stable_baselines3.common.callbacks import CallbackList

        from agents.callbacks import StopOnBudget, TrainMetrics

        ctx = self.context
        spent = (lambda: ctx.budget.spent) if ctx.budget is not None else (lambda: self._n_told)
        callbacks = CallbackList([StopOnBudget(self._handoff), TrainMetrics(_LogTracker(ctx.log), spent)])
        try:
            self.agent.learn(total_timesteps=2**62, callback=callbacks, reset_num_timesteps=self._fresh)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's next ask
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    _n_told = 0

    def _submit(self, kernels: list) -> list:
        """In the PPO thread: hand ``kernels`` to the caller and wait for their results."""
        with self._cond:
            self._batch = [Proposal(k) for k in kernels]
            self._given, self._told, self._resume = 0, {}, False
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._stopping or (len(self._told) == len(self._batch) and self._resume))
            results = [self._told[i] for i in range(len(self._batch)) if i in self._told]
            self._batch = []
        if len(results) < len(kernels) and not results:
            raise BudgetExhausted("the run ended before these kernels were evaluated")
        return results

    # -- ask / tell --------------------------------------------------------------------------
    def ask(self) -> Proposal:
        """The next kernel PPO's policy built (see :meth:`ask_many`)."""
        out = self.ask_many(1)
        if not out:
            raise BudgetExhausted("PPO stopped: the run's budget is spent")
        return out[0]

    def ask_many(self, n: int) -> list:
        """Up to ``n`` kernels of episodes that ended, in the thread's order; runs PPO until there are some."""
        with self._cond:
            if self._given >= len(self._batch):  # nothing left to hand out: let PPO run on
                if self._thread is None:
                    self._thread = threading.Thread(target=self._learn, name="kasrl-ppo", daemon=True)
                    self._thread.start()
                self._resume = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._done or self._given < len(self._batch))
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            out = self._batch[self._given : self._given + n]
            for i, p in enumerate(out):
                p.meta["index"] = self._given + i
            self._given += len(out)
            return out

    def batch_size(self) -> int:
        """The kernels of a round: those of the episodes ending on one vectorised step (at most ``n_envs``)."""
        left = len(self._batch) - self._given
        return left if left > 0 else self.options.n_envs

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """The result of a kernel :meth:`ask_many` handed out (the thread resumes at the next ask)."""
        with self._cond:
            self._told[proposal.meta["index"]] = result
            self._n_told += 1

    def close(self) -> None:
        """Stop the PPO thread (its environments see the budget spent)."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join(timeout=120)
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The agent (SB3 model file and RNG states) and the kernels it has seen."""
        return {**agent_state(self.agent, self.options), "seen": sorted(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (before the first ask).

        Raises:
            ConfigError: when the network's shape differs from the saved agent's.
        """
        if self._thread is not None:
            raise RuntimeError("load_state_dict must come before the first ask")
        self.seen.clear()
        self.seen.update(state.get("seen", ()))
        self._build(state)
        self._fresh = False

    def export(self, folder: Path) -> None:
        """Write the trained agent as ``folder / ppo_agent.zip`` (``KernelPPO.load`` reads it)."""
        self.agent.save(Path(folder) / AGENT_FILE)


class _LogTracker:
    """``tracker.log`` over a strategy context's ``log`` (what :class:`agents.callbacks.TrainMetrics` expects)."""

    def __init__(self, log: Any) -> None:
        self.log = log
