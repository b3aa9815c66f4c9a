"""Command line.

* ``python -m kasrl show KERNEL.json [--shape CxHxW] [--task FILE]``: source, cost and picture;
* ``python -m kasrl evaluate KERNEL.json [--task FILE] [--store DB]``: the full
  measured evaluation, every stage's outcome, latencies with spread, FLOPs,
  parameters, accuracy against the baseline and the reward;
* ``python -m kasrl export RUN_DIR [--top K] [--out DIR]``: a run's best kernels as
  standalone source, JSON and picture, with a note on using them (:mod:`kasrl.export`);
* ``python -m kasrl confirm RUN_DIR [--top K] [--seeds S]``: retrain a run's best
  kernels over seeds, paired with the baseline; a leaderboard by confirmed reward.
* ``python -m kasrl calibrate [--task T] [--out FILE] [--seconds S]``: measure
  this device and write its latency profile (see :mod:`kasrl.latency`) for the
  task's placements, batch, threads and device;
* ``python -m kasrl predict KERNEL.json [--task T] [--profile FILE] [--measure]``:
  the kernel's predicted latency beside the replaced 3x3 convolution's at each
  of the task's placements (and, with ``--measure``, both measured).

``show`` and ``evaluate`` re-solve a kernel's free sizes (the same graph, other
sizes) for the placements they use when its stored sizes do not fit there, and say
so in one line; where no legal sizes exist they refuse in one line.

Every command prints one line naming what is wrong and exits with status 2 on
bad input; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kasrl.errors import KasrlError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fit_sizes(graph, placements, budget, source: str, where: str):
    """The kernel with sizes that fit ``placements``, printing one line when they were re-solved.

    Raises:
        KasrlError: in one line, when no legal sizes exist there.
    """
    from kasrl.errors import SolverInfeasible
    from kasrl.placeholders import fit_kernel

    try:
        fitted, note = fit_kernel(graph, placements, budget)
    except SolverInfeasible as e:
        raise KasrlError(f"{source}: the kernel has no legal sizes at {where} ({', '.join(map(str, placements))}): {e}") from None
    if note:
        print(f"# {source}: {note}", flush=True)
    return fitted


def _cmd_show(args: argparse.Namespace) -> int:
    from kasrl.analysis import cost_report
    from kasrl.codegen.draw import draw_kernel
    from kasrl.codegen.source import kernel_source
    from kasrl.ir.canonical import kernel_hash, short_id
    from kasrl.ir.serialize import load_kernel
    from kasrl.solver.budget import parse_placements

    shape = parse_placements(args.shape, "--shape")[0] if args.shape else None
    graph = load_kernel(args.kernel)
    if args.task:
        from kasrl.eval.task_space import task_search_setup
        from kasrl.tasks import load_task

        task = load_task(args.task)
        placements, budget, _ = task_search_setup(task, latency=False)  # sizes are fitted without the latency budget
        where = f"task {task.name}'s placements" + (f" and --shape {shape}" if shape else "")
        graph = _fit_sizes(graph, tuple(dict.fromkeys((*placements, *([shape] if shape else [])))), budget, args.kernel, where)
        p = shape or placements[0]
    else:
        p = shape or parse_placements("64x56x56", "--shape")[0]
        graph = _fit_sizes(graph, (p,), None, args.kernel, f"--shape {p}")
    h = kernel_hash(graph)
    print(kernel_source(graph, doc=f"kasrl kernel {short_id(h)}"))
    r = cost_report(graph, p)
    print(f"# at {p}: FLOPs {r['flops']:,} = {r['flops_ratio']:.3f}x a 3x3 conv ({r['conv_flops']:,}); "
          f"params {r['params']:,} = {r['params_ratio']:.3f}x ({r['conv_params']:,})")
    out = Path(args.picture) if args.picture else Path(args.kernel).with_suffix(".png")
    draw_kernel(graph, out, f"kernel {short_id(h)}")
    print(f"# picture: {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from kasrl.eval.cache import CachedEvaluator
    from kasrl.eval.measured import MeasuredEvaluator
    from kasrl.eval.task_space import task_search_setup
    from kasrl.ir.serialize import load_kernel
    from kasrl.store.sqlite import SQLiteStore
    from kasrl.tasks import load_task

    task = load_task(args.task)
    graph = load_kernel(args.kernel)
    placements, budget, _ = task_search_setup(task, latency=False)  # sizes are fitted without the latency budget
    graph = _fit_sizes(graph, placements, budget, args.kernel, f"task {task.name}'s placements")
    store = SQLiteStore(args.store) if args.store else None
    inner = MeasuredEvaluator(task, store, isolation="inline" if args.inline else "process", run_id="cli", strategy="cli")
    ev = CachedEvaluator(inner, store, "cli", "cli") if store is not None else inner
    try:
        base = inner.baseline()
        r = ev.evaluate(graph)
    finally:
        inner.close()
    m = r.metrics
    print(f"kernel {r.kernel_hash[:16]} on task {task.name} ({', '.join(map(str, placements))}){' [cached]' if r.cached else ''}")
    for stage in ("build", "budget", "latency", "accuracy"):
        info = r.stages.get(stage)
        if info is None:
            print(f"  {stage:<9} not run")
            continue
        print(f"  {stage:<9} {info['outcome']:<16} {info['seconds']:.1f} s")
    if "flops_ratio" in m:
        print(f"  FLOPs {m['flops_ratio']:.3f}x and parameters {m['params_ratio']:.3f}x a 3x3 convolution (worst placement)")
    for key, value in sorted(m.items()):
        if key.startswith("kernel_speedup/"):
            p = key.split("/", 1)[1]
            print(f"  kernel at {p}: {value:.3f}x the conv's speed (spread {m.get('kernel_spread/' + p, 0):.1%})")
    if "speedup" in m:
        q = task.latency.quantile
        print(f"  network: {m['latency_ms']:.3f} ms vs baseline {m['baseline_latency_ms']:.3f} ms -> speedup {m['speedup']:.3f}x "
              f"(spread {m['speedup_spread']:.1%}; times at quantile {q:g} of calls, medians "
              f"{m.get('latency_median_ms', float('nan')):.3f} / {m.get('baseline_latency_median_ms', float('nan')):.3f} ms)")
    if "accuracy" in m:
        print(f"  accuracy {m['accuracy']:.2f}% vs baseline {base['accuracy']:.2f}% (gap {m['accuracy_gap']:+.2f} points)"
              + (" [pruned early]" if m.get("pruned") else ""))
    print(f"  status {r.status.label}; reward {r.reward:.4f}" + (f"; cause: {r.cause}" if r.cause else ""))
    return 0 if r.status.is_ok() else 1


def _cmd_confirm(args: argparse.Namespace) -> int:
    from kasrl.eval.confirm import confirm

    rows = confirm(args.run_dir, args.top, args.seeds, args.executor)
    if not rows:
        print(f"{args.run_dir}: no kernel with a measured speedup to confirm")
        return 1
    best = max(rows, key=lambda r: r["confirmed_reward"])
    print(f"best confirmed: {best['hash'][:16]} reward {best['confirmed_reward']:.3f} (run's {best['reward']:.3f}), "
          f"speedup {best['speedup']:.3f}x, accuracy {best['accuracy_mean']:.2f} +- {best['accuracy_sd']:.2f}% "
          f"over {len(best['seeds'])} seeds "
          f"(gap {best['gap_mean']:+.2f} +- {best['gap_sd']:.2f} pt); {Path(args.run_dir) / 'confirmed.json'}")
    return 0


def _pin_allocator(args: argparse.Namespace) -> None:
    """Re-run this command with glibc's allocator pinned (as the latency harness needs), when it came from the command line."""
    from kasrl.eval.latency import allocator_pinned, pinned_env

    if getattr(args, "from_command_line", False) and not allocator_pinned():
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "kasrl", *sys.argv[1:]], pinned_env())


def _latency_setup(task_name: str) -> tuple:
    """``(task, timed placements, every placement, budget, device)`` for the latency commands.

    Kernels are timed at the task's latency placements and must be legal at every
    placement it searches or times at. The dataset's files are not needed.
    """
    from kasrl.latency.task import task_placements
    from kasrl.tasks import load_task
    from kasrl.tasks.task import resolve_device

    task = load_task(task_name, check_paths=False)
    timed, every = task_placements(task)
    return task, timed, every, task.budget, str(resolve_device(task))


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from kasrl.latency.calibrate import calibrate, samples_path
    from kasrl.latency.task import check_supported, task_profile_fingerprint, task_profile_path

    if args.seconds is not None and not 0 < args.seconds <= 24 * 3600:
        raise KasrlError(f"--seconds {args.seconds:g}: must be a number of seconds in (0, 86400]")
    task, placements, legal_at, budget, device = _latency_setup(args.task)
    check_supported(task)
    seconds = args.seconds if args.seconds is not None else task.latency.calibrate_s
    spec = task.latency
    fp = task_profile_fingerprint(task)
    out = Path(args.out) if args.out else task_profile_path(task, placements)
    if out.exists() and out.is_dir():
        raise KasrlError(f"--out {out}: is a directory; give the profile's file name")
    _pin_allocator(args)
    model = calibrate(placements, spec.batch, spec.threads, device, args.seed, seconds, out, progress=not args.quiet, budget=budget,
                      space_placements=legal_at)
    import json

    cal = json.loads(out.read_text())["calibration"]
    n, res = cal["samples"], cal["residuals"]
    print(f"wrote latency profile {out} (samples in {samples_path(out)})")
    where = fp["cpu"] if fp["gpu"] is None else fp["gpu"]
    print(f"  device: {where}, torch {fp['torch']}, {fp['threads']} thread(s), batch {fp['batch']}, {fp['dtype']}, {device}")
    print(f"  measured {n['kernels']} random kernels ({n['nodes']} nodes alone, {n['whole_kernels']} whole) in {cal['seconds']:.0f} s "
          f"at {', '.join(map(str, placements))}")
    w = res["whole"]
    if w.get("n"):
        print(f"  whole kernels: median |relative error| {w['median_rel_error']:.1%}, Spearman {w['spearman'] or float('nan'):.3f}, "
              f"ops run {w['common_scale']:.2f}x slower inside a kernel than alone")
    for p, r in res["conv3x3"].items():
        print(f"  3x3 conv at {p}: measured {r['measured_s'] * 1e3:.3f} ms, predicted {model.predict_conv3x3(_parse_one(p)) * 1e3:.3f} ms "
              f"({r['rel_error']:+.1%})")
    return 0


def _parse_one(text: str):
    from kasrl.solver.budget import parse_placements

    return parse_placements(text)[0]


def _cmd_predict(args: argparse.Namespace) -> int:
    from kasrl.ir.serialize import load_kernel
    from kasrl.latency.profile import ProfileError, load_profile
    from kasrl.latency.task import task_profile_fingerprint, task_profile_path
    from kasrl.solver.solve import SizeSolver

    graph = load_kernel(args.kernel)
    task, placements, legal_at, budget, device = _latency_setup(args.task)
    spec = task.latency
    fp = task_profile_fingerprint(task)
    path = Path(args.profile) if args.profile else task_profile_path(task, placements)
    if not args.profile and not path.exists():
        raise ProfileError(f"no latency profile for this device at {path}; run `python -m kasrl calibrate --task {args.task}` first")
    model = load_profile(path, expect=fp)
    if graph.sizes is None:
        SizeSolver(legal_at, budget, latency=model).solve(graph)
    rows = []
    for p in placements:
        try:
            rows.append((p, model.predict(graph, p), model.predict_conv3x3(p)))
        except ValueError as e:
            raise KasrlError(f"{args.kernel}: at {p}: {e}") from None
    if args.measure:
        _pin_allocator(args)
    print(f"kernel {args.kernel} on task {task.name}, batch {spec.batch}, {spec.threads} thread(s), {device}; profile {path}")
    for p, k, c in rows:
        line = f"  {str(p):>10}: predicted {k * 1e3:9.3f} ms vs 3x3 conv {c * 1e3:9.3f} ms -> speedup {c / k:6.3f}x"
        if args.measure:
            t = _measure(graph, p, spec, device)
            line += f" | measured {t.kernel_ms:9.3f} ms vs {t.baseline_ms:9.3f} ms -> {t.speedup:6.3f}x (spread {t.speedup_spread:.1%})"
        print(line, flush=True)
    return 0


def _measure(graph, p, spec, device: str):
    import torch

    from kasrl.codegen.module import build_module
    from kasrl.eval.latency import conv3x3, time_pair

    x = torch.randn(spec.batch, p.c, p.h, p.w, device=device)
    return time_pair(build_module(graph, *p).to(device), conv3x3(p.c).to(device), x, spec.repeats, spec.warmup, spec.time_s,
                     spec.threads, quantile=spec.quantile, max_time_s=spec.max_time_s, target_spread=spec.target_spread)


def _cmd_export(args: argparse.Namespace) -> int:
    from kasrl.export import export_run

    written = export_run(args.run_dir, args.top, args.out)
    kernels = sum(1 for p in written if p.suffix == ".json")
    print(f"exported {kernels} kernel{'s' * (kernels != 1)} to {written[-1].parent} "
          f"(source, JSON, picture each; README.md: how to use them)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m kasrl`` argument parser."""
    parser = _Parser(prog="python -m kasrl", description="kasrl: kernel architecture search")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    show = sub.add_parser("show", help="print a kernel's source and cost, and draw it")
    show.add_argument("kernel", help="kernel JSON document")
    show.add_argument("--shape", default=None, help="placement CxHxW for the cost (default: the task's first, else 64x56x56)")
    show.add_argument("--task", default=None, help="task name or YAML path: fit the kernel's sizes to its placements")
    show.add_argument("--picture", default=None, help="where to write the picture (.png or .svg; default next to the kernel)")
    show.set_defaults(run=_cmd_show)
    ev = sub.add_parser("evaluate", help="run the full measured evaluation of a kernel and print every stage")
    ev.add_argument("kernel", help="kernel JSON document")
    ev.add_argument("--task", default="fashion_mnist_cnn", help="task name or YAML path (default fashion_mnist_cnn)")
    ev.add_argument("--store", default=None, help="SQLite results store to cache in (default: none)")
    ev.add_argument("--inline", action="store_true", help="evaluate in this process (no crash isolation)")
    ev.set_defaults(run=_cmd_evaluate)
    co = sub.add_parser("confirm", help="retrain a finished run's best kernels over several seeds, paired with the baseline")
    co.add_argument("run_dir", help="a finished run folder (runs/<run name>)")
    co.add_argument("--top", type=int, default=None, help="how many of its best kernels (default: the task's ladder.confirm_top)")
    co.add_argument("--seeds", type=int, default=None, help="training seeds each (default: the task's ladder.confirm_seeds)")
    co.add_argument("--executor", choices=("process", "inline"), default=None, help="where to train (default: the run's)")
    co.set_defaults(run=_cmd_confirm)
    cal = sub.add_parser("calibrate", help="measure this device and write its latency profile for a task's placements")
    cal.add_argument("--task", default="fashion_mnist_cnn", help="task name or YAML path (default fashion_mnist_cnn)")
    cal.add_argument("--out", default=None, help="profile file (default: the task's latency.profile, else "
                     "~/.cache/kasrl/latency/<device hash>-<placements hash>.json, or under $KASRL_LATENCY_DIR)")
    cal.add_argument("--seconds", type=float, default=None,
                     help="seconds of measuring (default: the task's latency.calibrate_s, 150; an interrupted run resumes)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the random kernels measured (default 0)")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    cal.set_defaults(run=_cmd_calibrate)
    pr = sub.add_parser("predict", help="print a kernel's predicted latency beside the 3x3 conv's at each of a task's placements")
    pr.add_argument("kernel", help="kernel JSON document")
    pr.add_argument("--task", default="fashion_mnist_cnn", help="task name or YAML path (default fashion_mnist_cnn)")
    pr.add_argument("--profile", default=None, help="latency profile (default: this device's, see `calibrate`)")
    pr.add_argument("--measure", action="store_true", help="also measure both with the latency harness (time_pair)")
    pr.set_defaults(run=_cmd_predict)
    ex = sub.add_parser("export", help="write a run's best kernels (source, JSON, picture) and a note on using them")
    ex.add_argument("run_dir", help="a run folder (runs/<run name>)")
    ex.add_argument("--top", type=int, default=None, help="how many of its best kernels (default: all it kept)")
    ex.add_argument("--out", default=None, help="folder to write to (default RUN_DIR/export)")
    ex.set_defaults(run=_cmd_export)
    return parser


def main(argv: list | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.from_command_line = argv is None
    try:
        return args.run(args)
    except KasrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
