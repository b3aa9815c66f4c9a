"""Evolve kernels with DEAP: aging evolution, (mu + lambda) or NSGA-II on the shared evaluator.

    python evolve.py [--config configs/evolve.yaml] [--resume RUN_DIR] [key=value ...]

Examples::

    python evolve.py                                          # aging evolution on fashion_mnist_cnn, measured
    python evolve.py algorithm=nsga2 evolution.population=8 budget.evaluations=40
    python evolve.py fidelity=analytic budget.evaluations=300 seed=3
    python evolve.py --resume runs/fashion_mnist_cnn__aging__0__1700000000 budget.evaluations=120

Steps: parse the config -> open the run (folder, store, wandb, evaluator) -> evolve
until the budget is spent (checkpoint every generation) -> write the Pareto front
(JSON, source, picture, table, scatter) -> leaderboard. Bad input prints one line
naming the key and exits with status 2.
"""

from __future__ import annotations

import sys

PROG = "evolve.py"


def main(argv=None) -> int:
    """Run ``evolve.py`` with ``argv`` (default: the command line); returns the exit status."""
    from evolution.algorithms import EvolveConfig
    from kasrl.errors import KasrlError
    from kasrl.experiment.cli import fail, parse_cli
    from kasrl.experiment.config import CONFIGS_DIR

    # -- config and run -------------------------------------------------------------
    try:
        cfg, resume = parse_cli(EvolveConfig, CONFIGS_DIR / "evolve.yaml", argv, PROG, __doc__.splitlines()[0])
        from kasrl.experiment.run import Run

        run = Run(cfg, cfg.algorithm, resume_dir=resume)
    except KasrlError as e:
        return fail(PROG, e)

    # -- evolve ---------------------------------------------------------------------
    from evolution.algorithms import run_evolution
    from evolution.report import print_front, write_front

    try:
        strategy = run_evolution(run, cfg)
    except KasrlError as e:  # e.g. a checkpoint written by another algorithm
        run.close()
        return fail(PROG, e)
    except KeyboardInterrupt:
        run.close()
        print(f"\ninterrupted; continue with: python {PROG} --resume {run.dir}", file=sys.stderr)
        return 130

    # -- outputs --------------------------------------------------------------------
    front = write_front(run, strategy)
    run.finish({"evolution/generations": strategy.generation, "evolution/front_size": len(front),
                "evolution/kernels_bred": strategy.n_asked})
    names = strategy.objectives
    if front:
        print_front(front, names, f"Pareto front ({names[0]} x {names[1]}, {len(front)} kernels): {run.dir / 'front'}/")
    else:
        print(f"{PROG}: no kernel succeeded within the budget")
    print(f"continue with: python {PROG} --resume {run.dir} budget.evaluations={cfg.budget.evaluations * 2}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
