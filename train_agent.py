"""Train PPO agents that build fast, accurate kernels.

    python train_agent.py [--config kasrl/configs/ppo.yaml] [--resume RUN_DIR] [key=value ...]

``key=value`` overrides any config key (``seed=3``, ``task=digits_cnn``,
``task.device=cuda``, ``fidelity=analytic``, ``budget.evaluations=120``,
``budget.seconds=600``, ``options.n_envs=8``, ``wandb.mode=disabled``...). The run
stops when its evaluation or time budget is spent (each finished episode is one
evaluation), prints the leaderboard of the best kernels and writes each as JSON,
standalone PyTorch source and a picture under ``<out>/<run name>/kernels/``, and the
agent as ``ppo_agent.zip``. The run state is checkpointed every ``checkpoint_every``
evaluations and at the end; ``--resume RUN_DIR`` continues the evaluation count
(give it more budget: ``budget.evaluations=120``). Metrics go to wandb (offline
unless ``WANDB_MODE``/``wandb.mode`` say otherwise), all against the evaluations
done. Bad input prints one line and exits with status 2.

This is a thin wrapper over :class:`kasrl.study.Study` (``strategy: ppo``).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROG = "train_agent.py"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "kasrl" / "configs" / "ppo.yaml"


def main(argv: list[str] | None = None) -> int:
    """Run ``train_agent.py`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from kasrl.errors import KasrlError
    from kasrl.experiment.cli import fail, parse_cli
    from kasrl.experiment.config import RunConfig

    try:
        cfg, resume = parse_cli(RunConfig, DEFAULT_CONFIG, argv, PROG, __doc__.split("\n")[0])
    except KasrlError as e:
        return fail(PROG, e)

    # one thread: the policy's forward passes must never spin against a timing
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(1)
    set_random_seed(cfg.seed)

    from kasrl.study import Study

    try:
        study = Study(cfg, resume=resume)
    except KasrlError as e:
        return fail(PROG, e)
    ev = study.run.evaluator
    print(f"{PROG}: {study.run.name}: {cfg.strategy} on {study.run.task.name} ({cfg.fidelity}); "
          f"budget {cfg.budget.evaluations} evaluations / {cfg.budget.seconds:.0f} s, {ev.spent} spent", flush=True)
    interrupted = False
    try:
        study.optimize()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{PROG}: interrupted; checkpoint saved", file=sys.stderr)
    except KasrlError as e:
        study.close()
        return fail(PROG, e)
    steps = getattr(getattr(study.strategy, "agent", None), "num_timesteps", None)
    rows = study.finish({"train/env_steps": steps} if steps is not None else None)
    if not rows:
        print(f"{PROG}: no kernel succeeded within the budget")
    print(f"continue with: python {PROG} --resume {study.run.dir} budget.evaluations={cfg.budget.evaluations * 2}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
