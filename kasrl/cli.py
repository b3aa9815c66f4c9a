"""Command line.

* ``python -m kasrl show KERNEL.json [--shape CxHxW] [--task FILE]``: source, cost and picture;
* ``python -m kasrl evaluate KERNEL.json [--task FILE] [--store DB]``: the full
  measured evaluation, every stage's outcome, latencies with spread, FLOPs,
  parameters, accuracy against the baseline and the reward;
* ``python -m kasrl export RUN_DIR [--top K] [--out DIR]``: a run's best kernels as
  standalone source, JSON and picture, with a note on using them (:mod:`kasrl.export`);
* ``python -m kasrl confirm RUN_DIR [--top K] [--seeds S]``: retrain a run's best
  kernels over seeds, paired with the baseline; a leaderboard by confirmed reward.

``show`` and ``evaluate`` re-solve a kernel's free sizes (the same graph, other
sizes) for the placements they use when its stored sizes do not fit there, and say
so in one line; where no legal sizes exist they refuse in one line.

Every command prints one line naming what is wrong and exits with status 2 on
bad input; nothing is written in that case.
"""

from __future__ import annotations

import argparse
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
        placements, budget = task_search_setup(task)
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
    placements, budget = task_search_setup(task)
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
          f"speedup {best['speedup']:.3f}x, accuracy {best['accuracy_mean']:.2f} +- {best['accuracy_sd']:.2f}% over {len(best['seeds'])} seeds "
          f"(gap {best['gap_mean']:+.2f} +- {best['gap_sd']:.2f} pt); {Path(args.run_dir) / 'confirmed.json'}")
    return 0


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
    ex = sub.add_parser("export", help="write a run's best kernels (source, JSON, picture) and a note on using them")
    ex.add_argument("run_dir", help="a run folder (runs/<run name>)")
    ex.add_argument("--top", type=int, default=None, help="how many of its best kernels (default: all it kept)")
    ex.add_argument("--out", default=None, help="folder to write to (default RUN_DIR/export)")
    ex.set_defaults(run=_cmd_export)
    return parser


def main(argv: list | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KasrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
