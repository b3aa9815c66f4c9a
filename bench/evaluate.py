"""Benchmark: the measured evaluation on the embedded default task.

    python bench/evaluate.py [--task fashion_mnist_cnn] [--kernels 12] [--repeats 5] [--noise-kernels 3] [--seed 0]

Prints: seconds per evaluation by stage (median), evaluations per hour on this
machine (wall time of full evaluations in the crash-isolated worker, nothing
cached), the peak memory (RSS high-water mark) of the evaluating process, and the
noise of the speed measurement: for each of ``--noise-kernels`` kernels, its latency
stage run ``--repeats`` times, spread (IQR / median) of its kernel-level speedup per
placement and of the end-to-end speedup. Targets: at least 60 full evaluations per
hour; a kernel-level speedup spread of at most 5%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import device_line, med, setup


def _iqr_over_median(xs):
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="fashion_mnist_cnn")
    ap.add_argument("--kernels", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noise-kernels", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fp = setup()
    from agents.random_sampler import RandomSampler
    from kasrl.eval.cache import CachedEvaluator
    from kasrl.eval.measured import MeasuredEvaluator
    from kasrl.eval.task_space import task_search_setup
    from kasrl.ir.canonical import kernel_hash
    from kasrl.space import SearchSpace
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    print(device_line(fp))
    task = load_task(args.task)
    placements, budget = task_search_setup(task)
    sampler = RandomSampler(SearchSpace(placements, budget), seed=args.seed)
    kernels = [sampler.ask().kernel for _ in range(args.kernels)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        inner = MeasuredEvaluator(task, store, isolation="process", run_id="bench", strategy="bench")
        t = time.perf_counter()
        base = inner.baseline()
        print(f"task {task.name}: placements {', '.join(map(str, placements))}; baseline accuracy {base['accuracy']:.2f}% "
              f"trained in {time.perf_counter() - t:.1f} s (once per task, cached)")
        ev = CachedEvaluator(inner, store, "bench", "bench")
        by_stage: dict = {}
        statuses = []
        t = time.perf_counter()
        for k in kernels:
            r = ev.evaluate(k)
            statuses.append(r.status.label)
            for stage, info in r.stages.items():
                by_stage.setdefault(stage, []).append(info["seconds"])
        wall = time.perf_counter() - t
        peak = _peak_rss_mb(inner._worker.proc.pid) if inner._worker and inner._worker.proc else float("nan")
        outcomes = ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses)))
        print(f"{args.kernels} full evaluations in {wall:.0f} s: {3600 * args.kernels / wall:.0f} evaluations per hour "
              f"(median {wall / args.kernels:.1f} s each; outcomes: {outcomes})")
        print("seconds per evaluation by stage (median): " + ", ".join(f"{s} {med(v):.2f}" for s, v in by_stage.items()))
        print(f"peak memory (RSS high-water mark) of the evaluating process: {peak:.0f} MB")
        inner.close()
        noisy = MeasuredEvaluator(task, store, isolation="process", skip=("accuracy",), run_id="bench", strategy="bench")
        spec = task.latency
        print(f"speed noise: each kernel's latency stage run {args.repeats} times ({spec.time_s:g}-{spec.longest_s:g} s of "
              f"interleaved timing per placement and for the network, speed at quantile {spec.quantile:g} of per-call times)")
        kernel_spreads = []
        for i, kernel in enumerate([k for k, s in zip(kernels, statuses, strict=True) if s == "ok"][: args.noise_kernels]):
            runs = [noisy.evaluate(kernel).metrics for _ in range(args.repeats)]
            for key in sorted(k for k in runs[0] if k.startswith("kernel_speedup/")) + ["speedup"]:
                xs = [m[key] for m in runs]
                label = "end-to-end network" if key == "speedup" else f"kernel at {key.split('/', 1)[1]}"
                spread = _iqr_over_median(xs)
                if key != "speedup":
                    kernel_spreads.append(spread)
                print(f"  kernel {i + 1} ({kernel_hash(kernel)[:8]}), {label}: median speedup {statistics.median(xs):.3f}x, "
                      f"spread (IQR/median) {spread:.1%}")
        noisy.close()
        if kernel_spreads:
            print(f"kernel-level speedup spread: median {statistics.median(kernel_spreads):.1%}, "
                  f"worst {max(kernel_spreads):.1%} over {len(kernel_spreads)} kernel-placements (target 5%)")

if __name__ == "__main__":
    main()
