"""Benchmark: the multi-fidelity ladder against full evaluation of every kernel, on the same wall-clock budget.

    python bench/ladder.py [--task fashion_mnist_cnn] [--minutes 10] [--strategy random] [--seed 0]
                           [--regret-kernels 100] [--confirm-seeds 3]

Two parts, in one process, one after the other (each with its own results store, so
neither reuses the other's measurements):

1. **Search**: the same strategy and seed for ``--minutes`` of evaluation with the
   task's ladder (``task.ladder.rungs``) and without it (every kernel pays the full
   evaluation). Printed per arm: kernels judged, kernels trained (short or full
   recipe), the best kernel by confirmed reward (its top 3 retrained with
   ``--confirm-seeds`` seeds on the whole test split, paired with the baseline
   network) with its confirmed accuracy (mean +- sd) and speedup. Target: the
   ladder judges at least 5x as many kernels.
2. **Regret**: a fixed set of ``--regret-kernels`` kernels drawn from the task's
   space, each evaluated in full, and the same kernels, in the same order, through
   the ladder. Printed: how many of the full evaluation's top 5 the ladder also
   ranks top 5 (target >= 4), the seconds each spent, and what stopped the others.

Run it on a quiet machine: timings of two processes on 2 cores disturb each other.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import device_line, setup


def search_arm(args, ladder: bool, folder: Path) -> dict:
    """One search run of ``--minutes``; returns its counts and confirmed best."""
    import kasrl

    fields = {"task": args.task, "strategy": args.strategy, "seed": args.seed, "fidelity": "measured", "executor": "process",
              "workers": 1, "out": str(folder / "runs"), "store": str(folder / "results.db"), "wandb": {"mode": "disabled"},
              "budget": {"evaluations": 100_000, "seconds": 60 * args.minutes}}
    if not ladder:
        fields["task_overrides"] = {"ladder.rungs": []}
    study = kasrl.Study(**fields, tracker=False, progress=False)
    start = time.perf_counter()
    study.optimize()
    searched = time.perf_counter() - start
    study.finish(confirm=True, confirm_top=3, confirm_seeds=args.confirm_seeds)
    history = study.history
    trained = sum(1 for h in history if "m_accuracy" in h)
    names = list(study.run.task.ladder.rungs) or ["full"]
    rungs: dict = {}
    for h in history:  # the last rung each kernel ran (m_rung: its index; no ladder: the full evaluation)
        name = names[int(h["m_rung"])] if "m_rung" in h else "full"
        rungs[name] = rungs.get(name, 0) + 1
    best = max(study.confirmed, key=lambda r: r["confirmed_reward"]) if study.confirmed else None
    return {"judged": len(history), "trained": trained, "seconds": searched, "rungs": rungs, "best": best}


def report_arm(label: str, arm: dict) -> None:
    b = arm["best"]
    best = "none confirmed" if b is None else (
        f"best confirmed {b['hash'][:8]}: reward {b['confirmed_reward']:.3f} (run's {b['reward']:.3f}), speedup {b['speedup']:.3f}x, "
        f"accuracy {b['accuracy_mean']:.2f} +- {b['accuracy_sd']:.2f}% over {len(b['seeds'])} seeds "
        f"(accuracy below the baseline, paired: {b['gap_mean']:+.2f} +- {b['gap_sd']:.2f} pt)")
    rungs = ", ".join(f"{k} {v}" for k, v in arm["rungs"].items())
    print(f"  {label}: {arm['judged']} kernels judged, {arm['trained']} trained in {arm['seconds']:.0f} s (reached: {rungs}); {best}",
          flush=True)


def regret(args, folder: Path) -> None:
    """Top-5 agreement between full evaluation and the ladder on one fixed set of kernels."""
    from agents.random_sampler import RandomSampler
    from kasrl.eval.task_space import task_search_setup
    from kasrl.experiment.config import RunConfig
    from kasrl.experiment.run import make_evaluator
    from kasrl.ir.canonical import kernel_hash
    from kasrl.space import SearchSpace
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    task = load_task(args.task)
    placements, budget, latency = task_search_setup(task)
    sampler = RandomSampler(SearchSpace(placements, budget, latency=latency), seed=args.seed + 1000)
    kernels = [sampler.ask().kernel for _ in range(args.regret_kernels)]
    hashes = [kernel_hash(k) for k in kernels]
    cfg = RunConfig(task=args.task, fidelity="measured", executor="process", workers=1)
    rewards, seconds, statuses = {}, {}, {}
    for arm in ("full", "ladder"):
        arm_task = load_task(args.task, overrides={"ladder.rungs": []}) if arm == "full" else task
        store = SQLiteStore(folder / f"regret_{arm}.db")
        ev = make_evaluator(cfg, arm_task, placements, store, f"regret-{arm}", "bench", latency)
        start = time.perf_counter()
        results = [ev.evaluate(k) for k in kernels]  # one at a time, in order: as a search feeds them
        seconds[arm] = time.perf_counter() - start
        ev.close()
        store.close()
        rewards[arm] = [r.reward for r in results]
        statuses[arm] = [r.status.label for r in results]
    top = {arm: set(sorted(range(len(kernels)), key=lambda i: -rewards[arm][i])[:5]) for arm in rewards}
    agree = len(top["full"] & top["ladder"])
    print(f"regret check on {len(kernels)} kernels: the ladder ranks {agree} of the full evaluation's top 5 in its top 5 "
          f"(target >= 4); full evaluation {seconds['full']:.0f} s, ladder {seconds['ladder']:.0f} s "
          f"({seconds['full'] / seconds['ladder']:.1f}x less time)")
    for i in sorted(top["full"], key=lambda i: -rewards["full"][i]):
        print(f"  full top 5: {hashes[i][:8]} reward {rewards['full'][i]:.3f}; ladder: {statuses['ladder'][i]} {rewards['ladder'][i]:.3f}")
    stopped = {s: statuses["ladder"].count(s) for s in sorted(set(statuses["ladder"]))}
    print(f"  ladder outcomes: {', '.join(f'{k} {v}' for k, v in stopped.items())}; "
          f"rank correlation of the rewards of kernels both finished: {_spearman(rewards, statuses):.3f}")


def _spearman(rewards: dict, statuses: dict) -> float:
    from scipy.stats import spearmanr

    both = [i for i, s in enumerate(statuses["ladder"]) if s == "ok" and statuses["full"][i] == "ok"]
    if len(both) < 3:
        return float("nan")
    return float(spearmanr([rewards["full"][i] for i in both], [rewards["ladder"][i] for i in both]).statistic)


def main() -> None:
    """Parse the command line and run both parts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="fashion_mnist_cnn")
    ap.add_argument("--minutes", type=float, default=10.0, help="evaluation time of each search arm")
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--regret-kernels", type=int, default=100, help="kernels of the regret check (0: skip it)")
    ap.add_argument("--confirm-seeds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="keep the runs and stores here (default: a temporary folder)")
    args = ap.parse_args()
    fp = setup()
    print(device_line(fp))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        if args.minutes > 0:
            print(f"search: {args.strategy}, seed {args.seed}, {args.minutes:g} min of evaluation per arm on {args.task}", flush=True)
            arms = {}
            for ladder in (False, True):
                arms[ladder] = search_arm(args, ladder, root / ("ladder" if ladder else "full"))
                report_arm("ladder      " if ladder else "full always ", arms[ladder])
            print(f"  kernels judged: {arms[True]['judged'] / max(1, arms[False]['judged']):.1f}x with the ladder (target >= 5x)")
        if args.regret_kernels:
            regret(args, root)


if __name__ == "__main__":
    main()
