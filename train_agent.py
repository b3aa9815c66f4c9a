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


def main(argv: list[str] | None = None) -> int:
    """Run ``train_agent.py`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from agents.ppo import PPOConfig
    from kasrl.errors import KasrlError
    from kasrl.experiment.cli import fail, parse_cli

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
    from agents.ppo import AGENT_FILE, search

    ev = run.evaluator
    print(f"{PROG}: {run.name}: {cfg.fidelity} fidelity on {run.task.name}, {cfg.ppo.policy} policy, {cfg.ppo.n_envs} envs; "
          f"budget {cfg.budget.evaluations} evaluations / {cfg.budget.seconds:.0f} s, {ev.spent} spent", flush=True)
    interrupted = False
    agent = None
    try:
        agent = search(run, cfg, resume=resume is not None)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{PROG}: interrupted; checkpoint saved", file=sys.stderr)
    rows = run.finish({"train/env_steps": agent.num_timesteps} if agent is not None else None)
    if not rows:
        print(f"{PROG}: no kernel succeeded within the budget")
    print(f"agent: {run.dir / AGENT_FILE}; continue with: python {PROG} --resume {run.dir} budget.evaluations={cfg.budget.evaluations * 2}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
