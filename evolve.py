"""Evolve kernels with DEAP: aging evolution, (mu + lambda) or NSGA-II on the shared evaluator.

    python evolve.py [--config kasrl/configs/evolve.yaml] [--resume RUN_DIR] [key=value ...]

Examples::

    python evolve.py                                          # aging evolution on fashion_mnist_cnn, measured
    python evolve.py strategy=nsga2 options.population=8 budget.evaluations=40
    python evolve.py fidelity=analytic budget.evaluations=300 seed=3
    python evolve.py --resume runs/fashion_mnist_cnn__aging__0__1700000000 budget.evaluations=120

Steps: parse the config -> a :class:`kasrl.study.Study` (run folder, store, wandb,
evaluator, the strategy from the registry) -> evolve until the budget is spent
(checkpoints every ``checkpoint_every`` evaluations) -> write the Pareto front
(JSON, source, picture, table, scatter) -> leaderboard. Bad input prints one line
naming the key and exits with status 2.
"""

from __future__ import annotations

import sys

PROG = "evolve.py"


def main(argv=None) -> int:
    """Run ``evolve.py`` with ``argv`` (default: the command line); returns the exit status."""
    from kasrl.errors import KasrlError
    from kasrl.experiment.cli import fail, parse_cli
    from kasrl.experiment.config import CONFIGS_DIR, RunConfig

    try:
        cfg, resume = parse_cli(RunConfig, CONFIGS_DIR / "evolve.yaml", argv, PROG, __doc__.splitlines()[0])
        from kasrl.study import Study

        study = Study(cfg, resume=resume)
    except KasrlError as e:
        return fail(PROG, e)

    from evolution.algorithms import EvolutionStrategy
    from evolution.report import print_front, write_front

    try:
        study.optimize()
    except KasrlError as e:  # e.g. a checkpoint written by another algorithm
        study.close()
        return fail(PROG, e)
    except KeyboardInterrupt:
        study.close()
        print(f"\ninterrupted; continue with: python {PROG} --resume {study.run.dir}", file=sys.stderr)
        return 130

    strategy = study.strategy
    front = []
    extra = {}
    if isinstance(strategy, EvolutionStrategy):
        print(strategy.logbook.stream)
        front = write_front(study.run, strategy)
        extra = {"evolution/generations": strategy.generation, "evolution/front_size": len(front),
                 "evolution/kernels_bred": strategy.n_asked}
    study.finish(extra)
    if front:
        names = strategy.objectives
        print_front(front, names, f"Pareto front ({names[0]} x {names[1]}, {len(front)} kernels): {study.run.dir / 'front'}/")
    elif isinstance(strategy, EvolutionStrategy):
        print(f"{PROG}: no kernel succeeded within the budget")
    print(f"continue with: python {PROG} --resume {study.run.dir} budget.evaluations={cfg.budget.evaluations * 2}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
