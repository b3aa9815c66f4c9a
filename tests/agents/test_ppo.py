"""PPO agents: training through ``train_agent.py``, checkpoint and resume, masks at prediction, config errors."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
import train_agent
from agents.callbacks import StopOnBudget, TrainMetrics
from agents.features import FactoredActionHead, GraphFeaturesExtractor, action_index
from agents.ppo import BudgetGuard, KernelPPO, RepeatPenalty, make_agent, make_vec_env
from kasrl.errors import ConfigError
from kasrl.eval.base import AnalyticEvaluator
from kasrl.eval.task_space import task_search_setup
from kasrl.experiment.budget import BudgetedEvaluator
from kasrl.experiment.config import RunConfig, load_config
from kasrl.experiment.run import Run, make_space
from kasrl.strategy import make_options
from kasrl.tasks import load_task
from kasrl.tracking import NullTracker

ROOT = Path(__file__).resolve().parents[2]
TINY = ["fidelity=analytic", "wandb.mode=disabled", "space.max_steps=10", "options.n_envs=2", "options.n_steps=8", "options.batch_size=8",
        "options.n_epochs=2", "options.hidden=16", "checkpoint_every=4", "top_k=2"]


def _tiny(tmp: Path, *more: str) -> list:
    return [*TINY, f"out={tmp}", f"store={tmp}/results.db", *more]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run (8 evaluations), then a resume to 12: ``(run dir, first state, resumed state)``."""
    tmp = tmp_path_factory.mktemp("ppo")
    assert train_agent.main(_tiny(tmp, "budget.evaluations=8")) == 0
    (run_dir,) = [p for p in tmp.iterdir() if p.is_dir()]
    first = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())
    assert train_agent.main(["--resume", str(run_dir), "budget.evaluations=12"]) == 0
    resumed = pickle.loads((run_dir / "checkpoint.pkl").read_bytes())
    return run_dir, first, resumed


def test_short_run_checkpoints_and_resume_continues_the_evaluation_count(trained):
    run_dir, first, resumed = trained
    assert (run_dir / "ppo_agent.zip").is_file() and (run_dir / "leaderboard.md").is_file()
    assert list((run_dir / "kernels").glob("*.py")) and list((run_dir / "kernels").glob("*.png"))
    assert first["budget"]["spent"] == 8
    assert first["strategy"]["num_timesteps"] >= 8 * 5  # min_steps=5 per episode; at most ~100 steps per env
    assert resumed["budget"]["spent"] == 12
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["evaluation"] for h in history] == list(range(1, 13))  # continued, not restarted at 1
    assert resumed["strategy"]["num_timesteps"] > first["strategy"]["num_timesteps"]
    assert all(h["status"] == "ok" for h in history)  # no budget-exhausted crash leaked into the record


def test_saved_policy_never_picks_a_masked_action(trained):
    run_dir = trained[0]
    cfg = load_config(RunConfig, run_dir / "config.yaml")
    placements, budget, latency = task_search_setup(load_task(cfg.task))
    space = make_space(cfg, placements, budget, latency)
    agent = KernelPPO.load(run_dir / "ppo_agent.zip", device="cpu")
    env = gym.make(envs.ENV_ID, space=space, evaluator=AnalyticEvaluator(placements))
    steps = 0
    for episode in range(6):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            mask = env.unwrapped.action_masks()
            action, _ = agent.predict(obs, action_masks=mask, deterministic=episode % 2 == 0)
            assert mask[int(action)] == 1, f"masked action {int(action)} picked at step {steps}"
            obs, _, terminated, truncated, info = env.step(int(action))
            done, steps = terminated or truncated, steps + 1
        assert info["status"] == "ok"
    assert steps >= 6 * 5


@pytest.mark.parametrize(
    "override, key",
    [("options.hiden=32", "options.hiden"), ("budget.evaluations=many", "budget.evaluations"), ("options.policy=cnn", "options.policy")],
)
def test_bad_config_is_one_line_naming_the_key_and_status_2(tmp_path, override, key):
    r = subprocess.run([sys.executable, str(ROOT / "train_agent.py"), override], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`{key}`" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "override, message",
    [({"batch_size": 1000}, "`options.batch_size` 1000 exceeds a rollout (options.n_envs * options.n_steps = 64)"),
     ({"gamma": 1.5}, "`options.gamma` must be in [0, 1], got 1.5"), ({"n_envs": 0}, "`options.n_envs` must be at least 1, got 0")],
)
def test_bad_ppo_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_options("ppo", override)


def test_checkpoint_every_is_checked():
    with pytest.raises(ConfigError, match=re.escape("`checkpoint_every` must be >= 0, got -1")):
        load_config(RunConfig, ROOT / "kasrl" / "configs" / "ppo.yaml", ["checkpoint_every=-1"])


def test_budget_guard_truncates_instead_of_evaluating_past_the_budget():
    cfg = load_config(RunConfig, None, ["space.max_steps=6"])
    placements, budget, latency = task_search_setup(load_task(cfg.task))
    space = make_space(cfg, placements, budget, latency)
    ev = BudgetedEvaluator(AnalyticEvaluator(placements), evaluations=1)
    a, b = (BudgetGuard(gym.make(envs.ENV_ID, space=space, evaluator=ev), ev) for _ in range(2))
    a.reset(seed=0)
    b.reset(seed=1)
    b.step(int(np.flatnonzero(b.action_masks()[1:])[0]) + 1)  # one step into b's episode
    done = False
    while not done:  # a spends the only evaluation
        _, reward, done, _, info = a.step(int(np.flatnonzero(a.action_masks())[-1]))
    assert ev.spent == 1 and ev.exhausted and info["status"] == "ok"
    _, reward, terminated, truncated, info = b.step(0)
    assert (reward, terminated, truncated, info["budget_exhausted"]) == (0.0, False, True, True)
    assert ev.spent == 1


class _Batches(AnalyticEvaluator):
    """The analytic evaluator, recording the size of every ``evaluate_many`` batch and every single call."""

    def __init__(self, placements) -> None:
        super().__init__(placements)
        self.calls: list = []

    def evaluate(self, kernel):
        self.calls.append(1)
        return super().evaluate(kernel)

    def evaluate_many(self, kernels):
        self.calls.append(len(kernels))
        return [super(_Batches, self).evaluate(k) for k in kernels]


def test_episodes_ending_on_the_same_step_are_evaluated_together_and_paid_once():
    cfg = load_config(RunConfig, None, ["space.max_steps=6"])
    placements, budget, latency = task_search_setup(load_task(cfg.task))
    space = make_space(cfg, placements, budget, latency)
    inner = _Batches(placements)
    ev = BudgetedEvaluator(inner, evaluations=10)
    venv = make_vec_env(space, ev, 3, seed=0)
    venv.reset()
    done = np.zeros(3, bool)
    while not done.any():  # identical states, identical actions: all three episodes end on one step
        masks = np.stack(venv.env_method("action_masks"))
        action = int(np.flatnonzero(masks[0])[-1])
        _, rewards, done, infos = venv.step(np.full(3, action))
    assert done.all() and inner.calls == [3] and ev.spent == 3
    assert [info["status"] for info in infos] == ["ok"] * 3
    assert rewards[0] == pytest.approx(infos[0]["result"].reward)


def test_repeat_penalty_lowers_the_reward_of_a_kernel_seen_before():
    cfg = load_config(RunConfig, None, ["space.max_steps=6"])
    placements, budget, latency = task_search_setup(load_task(cfg.task))
    space = make_space(cfg, placements, budget, latency)
    seen: set = set()
    rewards, repeats = [], []
    for episode in range(2):  # two envs, sharing `seen`, build the same kernel
        env = RepeatPenalty(gym.make(envs.ENV_ID, space=space, evaluator=AnalyticEvaluator(placements)), seen, penalty=0.5)
        env.reset(seed=episode)
        done = False
        while not done:
            _, reward, done, _, info = env.step(int(np.flatnonzero(env.unwrapped.action_masks())[-1]))
        rewards.append(reward)
        repeats.append(info["repeat"])
    assert repeats == [False, True] and rewards[1] == pytest.approx(rewards[0] - 0.5)
    assert seen == {info["kernel_hash"]}


class _Recorder(NullTracker):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list = []

    def _log(self, values: dict, step: int) -> None:
        self.rows.append((step, dict(values)))


@pytest.mark.parametrize("policy", ["graph", "mlp"])
def test_training_metrics_reach_the_tracker_at_the_evaluation_count(tmp_path, policy):
    cfg = load_config(RunConfig, None, _tiny(tmp_path, "budget.evaluations=8", f"options.policy={policy}"))
    run = Run(cfg, "ppo", tracker=False, progress=False)
    rec = _Recorder()
    agent = make_agent(make_vec_env(run.space, run.evaluator, 2, 0), make_options("ppo", cfg.options), 0, run.space)
    agent.learn(10**9, callback=[StopOnBudget(run.evaluator), TrainMetrics(rec, lambda: run.evaluator.spent)])
    run.close()
    assert run.evaluator.spent == 8
    steps = [s for s, _ in rec.rows]
    assert steps == sorted(steps) and steps[-1] <= 8
    logged = {k for _, values in rec.rows for k in values}
    assert {"train/policy_gradient_loss", "train/entropy", "train/value_loss", "rollout/ep_rew_mean"} <= logged


def test_graph_features_ignore_padding_and_are_finite():
    env = gym.make(envs.ENV_ID, max_steps=6)
    obs, _ = env.reset(seed=0)
    env.step(int(np.flatnonzero(env.unwrapped.action_masks()[1:])[0]) + 1)
    fx = GraphFeaturesExtractor(env.observation_space, hidden=8)
    batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["nodes"][0, 5:] = 0.7  # garbage in padded node rows must not matter
    assert torch.allclose(fx(batch), fx(noisy))
    empty = {k: torch.zeros_like(v) for k, v in batch.items()}
    assert torch.isfinite(fx(empty)).all()


def test_factored_action_head_shares_families_and_starts_uniform_over_families():
    env = gym.make(envs.ENV_ID, max_steps=6)
    space = env.unwrapped.space
    index = action_index(space)
    assert index.shape == (space.n_actions, 4)
    convs = [a for a, act in enumerate(space.table.actions) if act.family == "conv"]
    assert len(convs) > 100 and len(set(index[convs, 0])) == 1  # one family code shared by every conv action
    head = FactoredActionHead(8, index)
    logits = head(torch.randn(3, 8))
    assert logits.shape == (3, space.n_actions)
    probs = torch.softmax(logits, dim=-1)
    families = torch.as_tensor(index[:, 0])
    mass = torch.zeros(3, int(families.max()) + 1).index_add_(1, families, probs)
    assert torch.allclose(mass, torch.full_like(mass, 1.0 / mass.shape[1]), rtol=0.15)  # the family-first prior
    finish = [a for a, act in enumerate(space.table.actions) if act.kind == "finish"]
    assert probs[:, finish].sum(-1).min() > 0.5 / mass.shape[1]  # finishing is as likely as any family, not 1 in thousands


@pytest.mark.slow
def test_default_measured_fidelity_runs_end_to_end(tmp_path):
    """Real training and latency, three evaluations on the small digits task."""
    argv = ["task=digits_cnn", "wandb.mode=disabled", "budget.evaluations=3", "options.n_envs=2", "options.n_steps=8",
            "options.batch_size=8", f"out={tmp_path}", f"store={tmp_path}/results.db"]
    assert train_agent.main(argv) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 3
    assert "speedup" in (run_dir / "leaderboard.md").read_text()


def test_time_running_out_while_peeking_truncates_instead_of_raising(monkeypatch):
    cfg = load_config(RunConfig, None, ["space.max_steps=6"])
    placements, budget, latency = task_search_setup(load_task(cfg.task))
    space = make_space(cfg, placements, budget, latency)
    ev = BudgetedEvaluator(AnalyticEvaluator(placements), evaluations=10)
    venv = make_vec_env(space, ev, 2, seed=0)
    venv.reset()
    real = envs.KernelConstructionEnv.peek_kernel

    def slow_peek(self, action):
        kernel = real(self, action)
        if kernel is not None:
            ev.max_seconds = 0.0  # the time budget ends while the ending kernels are being solved
        return kernel

    monkeypatch.setattr(envs.KernelConstructionEnv, "peek_kernel", slow_peek)
    done = np.zeros(2, bool)
    while not done.any():
        masks = np.stack(venv.env_method("action_masks"))
        _, _, done, infos = venv.step(np.full(2, int(np.flatnonzero(masks[0])[-1])))
    assert done.all() and ev.spent == 0 and all(info.get("budget_exhausted") for info in infos)
