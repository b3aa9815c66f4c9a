"""Benchmark: evaluations per hour of the executors (local process pool and Ray) on the default task.

    python bench/executors.py [--task fashion_mnist_cnn] [--kernels 8] [--seed 0]

Backends, measured in one run on the same seeded kernels:

* ``process x1``  :class:`PoolEvaluator` over 1 crash-isolated worker process;
* ``process x2``  the same over 2 workers;
* ``ray x2``      :class:`RayEvaluator` with 2 actors on a local Ray of 2 CPUs. Ray
  must only start inside a loopback-only network namespace, so this part re-runs
  this script under ``unshare --net`` (``--inside-netns``) and reads its figures back.

Each backend gets a fresh results store (nothing is cached, the baseline is
trained again), starts its workers, trains the baseline and evaluates one warm-up
kernel per worker (not in the timed set) before the clock starts; the figure is
then ``kernels / wall time of evaluate_many(kernels)``, full measured evaluations
(build, budget, latency, accuracy). Also printed: start-up seconds (workers,
baseline, warm-up), the statuses, and the load average, since other work on the
machine slows every backend (compare figures from one run only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import device_line, setup


def _kernels(task_name: str, n: int, seed: int) -> list:
    """``n`` random finished kernels for the task as JSON documents (the same for a seed)."""
    from agents.random_sampler import RandomSampler
    from kasrl.eval.task_space import task_search_setup
    from kasrl.ir.serialize import dumps
    from kasrl.solver.cpsat import SolverConfig
    from kasrl.space import SearchSpace, SpaceConfig
    from kasrl.tasks import load_task

    placements, budget, latency = task_search_setup(load_task(task_name))
    sampler = RandomSampler(SearchSpace(placements, budget, SpaceConfig(), SolverConfig(seed=seed), latency=latency), seed=seed)
    return [dumps(sampler.ask().kernel) for _ in range(n)]


def _measure(make, workers: int, docs: list, warm: list) -> dict:
    """Start a backend (``make() -> evaluator``), warm it up, then time the batch."""
    from kasrl.ir.serialize import loads

    kernels = [loads(d, "kernel") for d in docs]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    ev = make()
    try:
        ev.baseline()
        ev.evaluate_many([loads(d, "kernel") for d in warm[:workers]])  # one per worker: every worker is up
        startup = time.perf_counter() - start
        t = time.perf_counter()
        results = ev.evaluate_many(kernels)
        wall = time.perf_counter() - t
    finally:
        ev.close()
    statuses = {}
    for r in results:
        statuses[r.status.label] = statuses.get(r.status.label, 0) + 1
    causes = [f"kernel {i}: {r.cause}" for i, r in enumerate(results) if r.cause]
    return {"workers": workers, "startup_s": startup, "wall_s": wall, "per_hour": 3600.0 * len(kernels) / wall, "statuses": statuses,
            "load": load, "causes": causes}


def _pool(task_name: str, workers: int, folder: str, docs: list, warm: list) -> dict:
    from kasrl.eval.executors import PoolEvaluator
    from kasrl.eval.measured import MeasuredEvaluator
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    task = load_task(task_name)
    store = SQLiteStore(Path(folder) / f"process{workers}.db")

    class _Pool(PoolEvaluator):
        def baseline(self):
            return self.workers[0].baseline()  # trained once; the others read it from the store

    try:
        return _measure(lambda: _Pool(lambda i: MeasuredEvaluator(task, store, isolation="process", run_id="bench"), workers), workers,
                        docs, warm)
    finally:
        store.close()


def _ray(task_name: str, workers: int, folder: str, docs: list, warm: list) -> dict:
    from kasrl.eval.ray_executor import RayEvaluator, loopback_only

    if not loopback_only():
        raise SystemExit("refusing to start Ray outside a loopback-only network namespace")
    db = str(Path(folder) / "ray.db")
    return _measure(lambda: RayEvaluator(task_name, workers, "", 1.0, 0.0, store_path=db, run_id="bench"), workers, docs, warm)


def _ray_in_netns(args, folder: str, docs: list, warm: list) -> dict:
    """Run the Ray part in a loopback-only network namespace and read its figures back."""
    from kasrl.eval.ray_executor import RAY_ENV, netns_command, netns_problem

    problem = netns_problem()
    if problem:
        return {"skipped": problem}
    spec = Path(folder) / "ray.json"
    spec.write_text(json.dumps({"docs": docs, "warm": warm}))
    cmd = netns_command([sys.executable, os.path.abspath(__file__), "--task", args.task, "--inside-netns", str(spec)])
    out = subprocess.run(cmd, env={**os.environ, **RAY_ENV}, capture_output=True, text=True)
    result = Path(folder) / "ray.out.json"
    if out.returncode != 0 or not result.exists():
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-20:])
        return {"skipped": f"the Ray part failed (exit code {out.returncode}):\n{tail}"}
    return json.loads(result.read_text())


def main() -> None:
    """Measure each backend and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="fashion_mnist_cnn")
    ap.add_argument("--kernels", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inside-netns", default="", help=argparse.SUPPRESS)  # the Ray part, re-run under unshare
    args = ap.parse_args()
    fp = setup()

    if args.inside_netns:
        spec = Path(args.inside_netns)
        data = json.loads(spec.read_text())
        out = _ray(args.task, 2, str(spec.parent), data["docs"], data["warm"])
        (spec.parent / "ray.out.json").write_text(json.dumps(out))
        return

    print(device_line(fp))
    all_docs = _kernels(args.task, args.kernels + 2, args.seed)
    docs, warm = all_docs[: args.kernels], all_docs[args.kernels :]
    print(f"task {args.task}: {args.kernels} random kernels (seed {args.seed}), full measured evaluations, fresh store per backend")
    print(f"{'backend':<12} {'workers':>7} {'start s':>8} {'wall s':>8} {'evals/hour':>11} {'load':>5}  statuses")
    with tempfile.TemporaryDirectory(prefix="kasrl-bench-executors-") as folder:
        _print("process x1", _pool(args.task, 1, folder, docs, warm))
        _print("process x2", _pool(args.task, 2, folder, docs, warm))
        _print("ray x2", _ray_in_netns(args, folder, docs, warm))
    print("start s: workers started, baseline trained, one warm-up kernel each; ray x2 also starts a local Ray (2 CPUs)")
    print("load: 1-minute load average when the backend started (2 cores; other work on the machine slows every figure)")


def _print(name: str, row: dict) -> None:
    if "skipped" in row:
        print(f"{name:<12} skipped: {row['skipped']}")
        return
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(row["statuses"].items()))
    figures = f"{row['workers']:>7} {row['startup_s']:>8.1f} {row['wall_s']:>8.1f} {row['per_hour']:>11.0f} {row['load']:>5.1f}"
    print(f"{name:<12} {figures}  {statuses}", flush=True)
    for cause in row["causes"]:
        print(f"{'':<12} {cause[:150]}", flush=True)


if __name__ == "__main__":
    main()
