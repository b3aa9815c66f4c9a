"""Benchmark: the measured evaluation on the embedded default task (or any task, on its device).

    python bench/evaluate.py [--task fashion_mnist_cnn] [--kernels 12] [--repeats 5] [--noise-kernels 3] [--seed 0]
                             [--save RUN.json] [--compare EARLIER_RUN.json]
                             [--device cpu|cuda|auto] [--dtype fp32|bf16|fp16] [--channels-last] [--compile] [--cuda-graphs]
                             [--batch N] [--time-s S] [--matrix [--dtypes fp32,bf16] [--graphs off,on] [--matrix-kernels 3]]

Prints: seconds per evaluation by stage (median), evaluations per hour on this
machine (wall time of full evaluations in the crash-isolated worker, nothing
cached), the peak memory (RSS high-water mark) of the evaluating process, and the
noise of the speed measurement: for each of ``--noise-kernels`` kernels, its latency
stage run ``--repeats`` times, spread (IQR / median) of its kernel-level speedup per
placement and of the end-to-end speedup. Targets: at least 60 full evaluations per
hour; a kernel-level speedup spread of at most 5%. ``--save`` keeps each
kernel-placement's median speedup; a later run with ``--compare`` (same seed, so
the same kernels) prints how far each moved between the two runs (target 5%).

The latency options (``--dtype``, ``--channels-last``, ``--compile``,
``--cuda-graphs``, ``--batch``, ``--time-s``) override the task's ``latency``
section; ``--device`` its ``device``. A task that needs a GPU stops with one line
where there is none (``--device cpu`` runs it on the CPU, without the CUDA-only
options). ``--matrix`` skips training: it times the 3x3 convolution against
itself (a check: about 1.0x) and ``--matrix-kernels`` sampled kernels against it
at every timed placement, at each dtype of ``--dtypes`` with CUDA graphs off and
on (``--graphs``), and prints the quiet-period milliseconds of each side and the
speedup (with CUDA events on a GPU). GPU runs, e.g.::

    python bench/evaluate.py --task cifar10_resnet18_gpu --kernels 6 --noise-kernels 2
    python bench/evaluate.py --task cifar10_resnet18_gpu --matrix --dtypes fp32,bf16 --graphs off,on
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import med, setup


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


def _overrides(args) -> dict:
    """The task overrides the command line asks for."""
    out = {"device": args.device, "latency.dtype": args.dtype, "latency.channels_last": args.channels_last,
           "latency.compile": args.compile, "latency.cuda_graphs": args.cuda_graphs, "latency.batch": args.batch,
           "latency.time_s": args.time_s}
    if args.time_s is not None:
        out["latency.max_time_s"] = None
    return {k: v for k, v in out.items() if v is not None}


def _task(args):
    """The task with the command line's overrides, and its device; exits with one line when it cannot run here."""
    from kasrl.errors import ConfigError
    from kasrl.eval.latency import describe_device, device_fingerprint
    from kasrl.tasks import load_task, resolve_device, task_from_dict

    try:
        task = task_from_dict(load_task(args.task).to_dict(), overrides=_overrides(args))
        device = resolve_device(task)
    except ConfigError as e:
        hint = " (--device cpu runs it on the CPU)" if "CUDA is not available" in str(e) else ""
        sys.exit(f"bench/evaluate.py: task {args.task}: {e}{hint}")
    print("device: " + describe_device(device_fingerprint(device, task.latency.dtype, task.latency.threads)))
    return task


def latency_matrix(task, kernels, dtypes: list, graphs: list) -> None:
    """Time the conv against itself and each kernel against the conv, per placement, at each dtype and CUDA-graph setting."""
    import torch

    from kasrl.eval.latency import TimingOptions, conv3x3, prepare_pair, time_prepared
    from kasrl.eval.runtime import TaskRuntime
    from kasrl.eval.stages import GraphKernel
    from kasrl.ir.canonical import kernel_hash

    rt = TaskRuntime(task)  # pins the device
    spec = task.latency
    on_cuda = rt.device.type == "cuda"
    print(f"latency matrix on {rt.device}: batch {spec.batch}, channels_last {spec.channels_last}, compile {spec.compile}, "
          f"{spec.time_s:g}-{spec.longest_s:g} s per timing, speed at quantile {spec.quantile:g} of per-call times")
    sides = [("conv", None)] + [(kernel_hash(k)[:8], GraphKernel(k)) for k in kernels]
    for dtype in dtypes:
        for graph in graphs:
            if not on_cuda and (dtype == "fp16" or graph):
                print(f"  {dtype}, cuda graphs {'on' if graph else 'off'}: skipped (CUDA only; this run is on {rt.device})")
                continue
            opts = TimingOptions(dtype, spec.channels_last, spec.compile and not graph, graph)
            for p in rt.timed_placements:
                for name, kernel in sides:
                    torch.manual_seed(0)
                    module = conv3x3(p.c) if kernel is None else kernel.build(p)
                    x = torch.randn(spec.batch, p.c, p.h, p.w, device=rt.device)
                    try:
                        pair = prepare_pair(module, conv3x3(p.c), x, opts, spec.warmup)
                        t = time_prepared(pair, spec.repeats, spec.warmup, spec.time_s, spec.threads, quantile=spec.quantile,
                                          max_time_s=spec.longest_s, target_spread=spec.target_spread)
                    except Exception as e:  # noqa: BLE001 - a kernel that does not run this way is reported, the grid goes on
                        print(f"  {dtype:4s} graphs {'on ' if graph else 'off'} {str(p):10s} {name:8s}: failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})")
                        continue
                    print(f"  {dtype:4s} graphs {'on ' if graph else 'off'} {str(p):10s} {name:8s}: {t.kernel_ms:8.4f} ms vs conv "
                          f"{t.baseline_ms:8.4f} ms -> speedup {t.speedup:6.3f}x (spread {t.speedup_spread:.1%}, {t.calls[0]} calls)")


def main() -> None:
    """Parse the command line, then run the full evaluations and the noise check, or the latency grid."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="fashion_mnist_cnn")
    ap.add_argument("--kernels", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noise-kernels", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override task.device")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="override latency.dtype (autocast; fp16 on CUDA only)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="override latency.channels_last")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="override latency.compile")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None, help="override latency.cuda_graphs")
    ap.add_argument("--batch", type=int, help="override latency.batch")
    ap.add_argument("--time-s", type=float, help="override latency.time_s (and max_time_s: 3x)")
    ap.add_argument("--matrix", action="store_true", help="only the latency grid over --dtypes x --graphs (no training)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="dtypes of the latency grid")
    ap.add_argument("--graphs", default="off,on", help="CUDA-graph settings of the latency grid (off, on)")
    ap.add_argument("--matrix-kernels", type=int, default=3, help="sampled kernels in the latency grid")
    ap.add_argument("--save", default=None, help="write each kernel-placement's median speedup of the noise check here (JSON)")
    ap.add_argument("--compare", default=None, help="a --save file of an earlier run: print how far each median moved since")
    args = ap.parse_args()
    setup()
    from agents.random_sampler import RandomSampler
    from kasrl.eval.cache import CachedEvaluator
    from kasrl.eval.latency import describe_device
    from kasrl.eval.measured import MeasuredEvaluator
    from kasrl.eval.task_space import task_search_setup
    from kasrl.ir.canonical import kernel_hash
    from kasrl.space import SearchSpace
    from kasrl.store.sqlite import SQLiteStore

    task = _task(args)
    placements, budget, latency = task_search_setup(task)
    sampler = RandomSampler(SearchSpace(placements, budget, latency=latency), seed=args.seed)
    if args.matrix:
        kernels = [sampler.ask().kernel for _ in range(args.matrix_kernels)]
        graphs = [{"off": False, "on": True}[g.strip()] for g in args.graphs.split(",") if g.strip()]
        latency_matrix(task, kernels, [d.strip() for d in args.dtypes.split(",") if d.strip()], graphs)
        return
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
        print("measured on: " + describe_device(inner.device_info()))
        inner.close()
        noisy = MeasuredEvaluator(task, store, isolation="process", skip=("accuracy",), run_id="bench", strategy="bench")
        spec = task.latency
        print(f"speed noise: each kernel's latency stage run {args.repeats} times ({spec.time_s:g}-{spec.longest_s:g} s of "
              f"interleaved timing per placement and for the network, speed at quantile {spec.quantile:g} of per-call times; "
              f"{spec.dtype}, channels_last {spec.channels_last}, compile {spec.compile}, cuda_graphs {spec.cuda_graphs})")
        kernel_spreads = []
        medians: dict = {}
        for i, kernel in enumerate([k for k, s in zip(kernels, statuses, strict=True) if s == "ok"][: args.noise_kernels]):
            runs = [noisy.evaluate(kernel).metrics for _ in range(args.repeats)]
            for key in sorted(k for k in runs[0] if k.startswith("kernel_speedup/")) + ["speedup"]:
                xs = [m[key] for m in runs]
                label = "end-to-end network" if key == "speedup" else f"kernel at {key.split('/', 1)[1]}"
                spread = _iqr_over_median(xs)
                medians[f"{kernel_hash(kernel)[:16]} {label}"] = statistics.median(xs)
                if key != "speedup":
                    kernel_spreads.append(spread)
                print(f"  kernel {i + 1} ({kernel_hash(kernel)[:8]}), {label}: median speedup {statistics.median(xs):.3f}x, "
                      f"spread (IQR/median) {spread:.1%}")
        noisy.close()
        if kernel_spreads:
            print(f"kernel-level speedup spread: median {statistics.median(kernel_spreads):.1%}, "
                  f"worst {max(kernel_spreads):.1%} over {len(kernel_spreads)} kernel-placements (target 5%)")
        if args.save:
            Path(args.save).write_text(json.dumps(medians, indent=1))
        if args.compare:
            between_runs(json.loads(Path(args.compare).read_text()), medians)


def between_runs(before: dict, now: dict) -> None:
    """How far each kernel-placement's median speedup moved between two runs (|now / before - 1|)."""
    common = sorted(set(before) & set(now))
    if not common:
        print("between runs: no kernel-placement in common with the earlier run (another seed, task or latency model?)")
        return
    moves = {k: abs(now[k] / before[k] - 1) for k in common}
    for k in common:
        print(f"  {k}: {before[k]:.3f}x then {now[k]:.3f}x ({moves[k]:.1%})")
    kernel = [v for k, v in moves.items() if "network" not in k]
    print(f"between runs, kernel-level median speedups moved: median {statistics.median(kernel):.1%}, worst {max(kernel):.1%} "
          f"over {len(kernel)} kernel-placements (target 5%); end-to-end worst "
          f"{max((v for k, v in moves.items() if 'network' in k), default=float('nan')):.1%}")

if __name__ == "__main__":
    main()
