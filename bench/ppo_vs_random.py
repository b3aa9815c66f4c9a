"""Benchmark: does PPO learn? Its best-so-far against its own untrained policy (the matched baseline), on equal budgets.

    python bench/ppo_vs_random.py [--episodes 400] [--seeds 0,1,2] [--task fashion_mnist_cnn]

PPO starts from a prior (the untrained policy's action distribution); comparing it
with a uniform random sampler measures that prior. Here its baseline is
``random_prior``: kernels drawn from exactly the policy PPO starts from (same seed,
same options), never updated. Whatever PPO gains over it, it learned.

**The reward is synthetic and documented, not saturated**: the analytic reward
(FLOPs and parameter ratios) tops out at ln(100) = 2.303, which the prior already
reaches. Instead each kernel scores ``1 - d / max(len(a), len(b))``, with ``d`` the
edit distance between the kernel's primitive sequence (its nodes' labels in order,
the finishing step's excluded) and a planted target of six primitives (a grouped
bottleneck: project to a new width, group, a grouped 3x3 conv, GELU, project back to
C, scale the channels). Only that kernel scores 1.0; the prior reaches it with a
probability too small to matter (the script prints the prior's best), so climbing
towards it is learning. Finished kernels are sized with the first legal sizes (the
score ignores sizes). Printed: per seed and as medians, the best score so far after
25/50/100% of the episodes for PPO and for its prior, and PPO's improvement.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import device_line, med, setup

TARGET = ["projection[grouped=False,out=new]", "group", "conv[dilation=1,kh=3,kw=3,out=new]", "activation[gelu]",
          "projection[grouped=False,out=C]", "scale[C]"]


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two label sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class PlantedScore:
    """The synthetic evaluator: similarity of the kernel's primitive sequence to :data:`TARGET`."""

    fidelity = "analytic"
    task_fingerprint = "planted-sequence"

    def evaluate(self, kernel):
        from kasrl.eval.base import EvalResult
        from kasrl.ir.canonical import kernel_hash
        from kasrl.store.records import Status

        labels = [n.prim.label() for n in kernel.nodes[1:] if not n.closing]
        score = 1.0 - edit_distance(labels, TARGET) / max(len(labels), len(TARGET))
        return EvalResult(Status.OK, score, {"n_primitives": float(len(labels))}, (score, 0.0), kernel_hash=kernel_hash(kernel),
                          fidelity="analytic")

    def evaluate_many(self, kernels):
        return [self.evaluate(k) for k in kernels]


def run(strategy: str, task: str, seed: int, episodes: int) -> list:
    """Best score so far after each evaluation of one run."""
    from kasrl.eval.task_space import task_search_setup
    from kasrl.experiment.budget import BudgetedEvaluator, evaluate_rounds
    from kasrl.space import SearchSpace, SpaceConfig
    from kasrl.strategy import StrategyContext, make_strategy

    placements, budget, latency = task_search_setup(task)
    space = SearchSpace(placements, budget, SpaceConfig(min_steps=3, max_steps=12), latency=latency)
    ev = BudgetedEvaluator(PlantedScore(), evaluations=episodes)
    ppo = {"sizes": "feasible"}
    options = ppo if strategy == "ppo" else {"ppo": ppo}
    s = make_strategy(strategy, StrategyContext(space, seed, budget=ev), options)
    try:
        while not ev.exhausted:
            proposals = s.ask_many(max(1, min(s.batch_size(), ev.remaining)))
            for p, r in zip(proposals, evaluate_rounds(ev, [p.kernel for p in proposals], 1), strict=False):
                s.tell(p, r)
    finally:
        s.close()
    return [row["best_reward"] for row in ev.history]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--task", default="fashion_mnist_cnn")
    args = ap.parse_args()
    fp = setup()
    print(device_line(fp))
    seeds = [int(s) for s in args.seeds.split(",")]
    marks = [max(1, args.episodes // 4), max(1, args.episodes // 2), args.episodes]
    table: dict = {"ppo": [], "random_prior": []}
    for seed in seeds:
        for name in ("random_prior", "ppo"):
            t = time.perf_counter()
            curve = run(name, args.task, seed, args.episodes)
            at = [curve[min(m, len(curve)) - 1] for m in marks]
            table[name].append(at)
            print(f"seed {seed} {name:>12}: best after {'/'.join(map(str, marks))} episodes "
                  f"{' / '.join(f'{v:.3f}' for v in at)} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"median over seeds {seeds}: best score after {'/'.join(map(str, marks))} episodes (1.0 = the planted target)")
    for name, rows in table.items():
        print(f"  {name:>12}: " + " / ".join(f"{med([r[i] for r in rows]):.3f}" for i in range(3)))
    gains = [[p[i] - b[i] for p, b in zip(table["ppo"], table["random_prior"], strict=True)] for i in range(3)]
    print("  PPO over its untrained policy: " + " / ".join(f"{statistics.median(g):+.3f}" for g in gains)
          + f"; ahead on {sum(1 for p, b in zip(table['ppo'], table['random_prior'], strict=True) if p[2] > b[2])} of {len(seeds)} seeds "
            "at the end")


if __name__ == "__main__":
    main()
