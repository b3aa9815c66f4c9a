"""Benchmark: does PPO learn? Its best-so-far against the random sampler's, on equal budgets.

    python bench/ppo_vs_random.py [--episodes 600] [--seeds 0,1,2] [--task fashion_mnist_cnn] [key=value ...]

Both strategies run on the fast analytic reward (``fidelity=analytic``: FLOPs and
parameter ratios against a 3x3 conv, no training, no timing) through the same
:class:`~kasrl.experiment.run.Run` machinery as ``train_agent.py``: the same search
space, the same budgeted evaluator, one evaluation per finished kernel. PPO
(``KernelPPO`` with ``configs/ppo.yaml``'s hyperparameters, overridable with
``ppo.*=...``) learns for ``--episodes`` episodes; the random sampler (Canvas's
baseline, uniform over legal actions) draws as many kernels. Printed per seed: the
best reward so far after 25/50/100% of the episodes, and the last quarter's mean
reward (what the policy draws once it has learned); then medians over seeds and how
many seeds PPO wins.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import device_line, med, setup

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace, seed: int, out: Path, extra: list):
    from agents.ppo import PPOConfig
    from kasrl.experiment.config import load_config

    overrides = [f"seed={seed}", f"task={args.task}", "fidelity=analytic", f"budget.evaluations={args.episodes}",
                 "budget.seconds=1e9", f"out={out}", f"store={out}/results.db", "wandb.mode=disabled", "executor=inline"]
    return load_config(PPOConfig, ROOT / "configs" / "ppo.yaml", overrides + extra)


def run_ppo(cfg) -> tuple:
    """Train PPO until its budget is spent (``train_agent.py``'s loop); returns (history rows, seconds)."""
    from stable_baselines3.common.utils import set_random_seed

    from agents.ppo import search
    from kasrl.experiment.run import Run

    set_random_seed(cfg.seed)
    run = Run(cfg, "ppo", tracker=False, progress=False)
    t = time.perf_counter()
    search(run, cfg)
    seconds = time.perf_counter() - t
    history = list(run.evaluator.history)
    run.close()
    return history, seconds


def run_random(cfg) -> tuple:
    """Draw random kernels until the same budget is spent; returns (history rows, seconds)."""
    from agents.random_sampler import RandomSampler
    from kasrl.experiment.drive import drive
    from kasrl.experiment.run import Run

    run = Run(cfg, "random", tracker=False, progress=False)
    t = time.perf_counter()
    drive(RandomSampler(run.space, seed=cfg.seed), run)  # Canvas's ranges: 5-25 actions, 2-8 branches
    seconds = time.perf_counter() - t
    history = list(run.evaluator.history)
    run.close()
    return history, seconds


def summarise(history: list) -> dict:
    """Best-so-far at 25/50/100% of the episodes and the last quarter's mean reward."""
    n = len(history)
    best = [h["best_reward"] for h in history]
    quarter = [h["reward"] for h in history[n - n // 4:]] or [float("nan")]
    return {"n": n, "b25": best[max(n // 4 - 1, 0)], "b50": best[max(n // 2 - 1, 0)], "best": best[-1],
            "late_mean": statistics.fmean(quarter)}


def main() -> None:
    """Run both strategies for every seed and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=600, help="episodes (= evaluations) per strategy and seed")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--task", default="fashion_mnist_cnn", help="task whose placements and budget define the space")
    p.add_argument("--strategies", default="random,ppo", help="comma-separated: random, ppo (one alone when tuning)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both runs, e.g. ppo.ent_coef=0.02")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.strategies = args.strategies.split(",")
    fp = setup(threads=1)
    print("command: python bench/ppo_vs_random.py " + " ".join(sys.argv[1:]))
    print(device_line(fp))
    print(f"task {args.task}, analytic fidelity, {args.episodes} episodes per strategy and seed\n")
    header = f"{'seed':>4} {'strategy':>8} {'best@25%':>9} {'best@50%':>9} {'best':>8} {'last-25% mean':>14} {'seconds':>8}"
    print(header)
    rows = {"ppo": [], "random": []}
    with tempfile.TemporaryDirectory(prefix="kasrl-bench-") as tmp:
        for seed in args.seeds:
            for name, fn in (("random", run_random), ("ppo", run_ppo)):
                if name not in args.strategies:
                    continue
                cfg = _config(args, seed, Path(tmp) / f"{name}{seed}", args.overrides)
                history, seconds = fn(cfg)
                s = summarise(history)
                rows[name].append(s)
                print(f"{seed:>4} {name:>8} {s['b25']:>9.3f} {s['b50']:>9.3f} {s['best']:>8.3f} {s['late_mean']:>14.3f} {seconds:>8.0f}",
                      flush=True)
    print("\nmedians over seeds")
    print(header)
    for name in ("random", "ppo"):
        r = rows[name]
        print(f"{'-':>4} {name:>8} {med([x['b25'] for x in r]):>9.3f} {med([x['b50'] for x in r]):>9.3f} "
              f"{med([x['best'] for x in r]):>8.3f} {med([x['late_mean'] for x in r]):>14.3f}")
    for key, label in (("b25", "25%"), ("b50", "50%"), ("best", "100%")):
        wins = sum(a[key] > b[key] for a, b in zip(rows["ppo"], rows["random"], strict=False))
        ties = sum(a[key] == b[key] for a, b in zip(rows["ppo"], rows["random"], strict=False))
        print(f"after {label} of the episodes PPO's best-so-far beats random's on {wins} of {len(args.seeds)} seeds ({ties} ties; "
              f"median {med([x[key] for x in rows['ppo']]):.3f} vs {med([x[key] for x in rows['random']]):.3f})")
    print("(2.303 = ln(100) / 2 is a kernel at the 1% floor of both FLOPs and parameters, which both strategies can reach: "
          "a tie there is not a win)")

if __name__ == "__main__":
    main()
