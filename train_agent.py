"""Train PPO agents that build fast, accurate kernels.

    python train_agent.py [--config configs/ppo.yaml] [--resume RUN_DIR] [key=value ...]

``key=value`` overrides any config key (``seed=3``, ``task=digits_cnn``,
``fidelity=analytic``, ``budget.evaluations=120``, ``budget.seconds=600``,
``ppo.n_envs=8``, ``wandb.mode=disabled``...). The run stops when its evaluation or
time budget is spent (each finished episode is one evaluation), prints the leaderboard
of the best kernels and writes each as JSON, standalone PyTorch source and a picture
under ``<out>/<run name>/kernels/``. The agent and the run state are checkpointed
every ``ppo.checkpoint_every`` evaluations and at the end; ``--resume RUN_DIR``
continues the evaluation count (give it more budget: ``budget.evaluations=120``).
Metrics go to wandb (offline unless ``WANDB_MODE``/``wandb.mode`` say otherwise),
all against the evaluations done. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROG = "train_agent.py"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "ppo.yaml"
AGENT_FILE = "ppo_agent.zip"


def main(argv: list[str] | None = None) -> int:
    """Run ``train_agent.py`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from kasrl.errors import KasrlError
    from kasrl.experiment.cli import fail, parse_cli

    from agents.ppo import PPOConfig

    # -- 1. config: defaults < YAML (or the run folder's saved config) < key=value -------------
    try:
        cfg, resume = parse_cli(PPOConfig, DEFAULT_CONFIG, argv, PROG, __doc__.split("\n")[0])
    except KasrlError as e:
        return fail(PROG, e)

    # -- 2. seeding; one thread, so the policy's forward passes never spin against a timing ----
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(1)
    set_random_seed(cfg.seed)

    # -- 3. the run: folder, store, tracker, search space, budgeted evaluator ------------------
    from kasrl.experiment.run import Run

    try:
        run = Run(cfg, "ppo", resume_dir=resume)
    except KasrlError as e:
        return fail(PROG, e)
    try:
        return _train(run, cfg, resume)
    except KasrlError as e:
        run.close()
        return fail(PROG, e)


def _train(run, cfg, resume: str | None) -> int:
    from stable_baselines3.common.callbacks import CallbackList

    from agents.callbacks import BestMetrics, RunCheckpoint, StopOnBudget, TrainMetrics
    from agents.ppo import agent_state, make_agent, make_vec_env, restore_agent

    opts = cfg.ppo
    ev = run.evaluator

    # -- 4. envs sharing the run's search space and budget; a fresh or restored agent ----------
    state = run.load_checkpoint() if resume else None
    venv = make_vec_env(run.space, ev, opts.n_envs, cfg.seed + ev.spent)
    agent = restore_agent(state, venv, opts) if state else make_agent(venv, opts, cfg.seed)
    print(f"{PROG}: {run.name}: {cfg.fidelity} fidelity on {run.task.name}, {opts.policy} policy, {opts.n_envs} envs; "
          f"budget {cfg.budget.evaluations} evaluations / {cfg.budget.seconds:.0f} s, {ev.spent} spent", flush=True)

    # -- 5. callbacks: stop at the budget, metrics to wandb, checkpoints ----------------------
    def save() -> None:
        run.save_checkpoint(agent_state(agent, opts))
        agent.save(run.dir / AGENT_FILE)

    ev.callbacks.append(BestMetrics(run.tracker, run.top.best()))
    run.start_progress()
    spent = lambda: ev.spent  # noqa: E731
    callbacks = CallbackList([StopOnBudget(ev), TrainMetrics(run.tracker, spent), RunCheckpoint(save, spent, opts.checkpoint_every)])

    # -- 6. learn until the budget is spent (each finished episode is one evaluation) ----------
    interrupted = False
    try:
        if not ev.exhausted:
            agent.learn(total_timesteps=2**62, callback=callbacks, reset_num_timesteps=state is None)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{PROG}: interrupted; saving a checkpoint", file=sys.stderr)

    # -- 7. checkpoint, leaderboard, kernels --------------------------------------------------
    save()
    rows = run.finish({"train/env_steps": agent.num_timesteps, "train/updates": agent._n_updates})
    if not rows:
        print(f"{PROG}: no kernel succeeded within the budget")
    print(f"agent: {run.dir / AGENT_FILE}; continue with: python {PROG} --resume {run.dir} budget.evaluations={cfg.budget.evaluations * 2}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
