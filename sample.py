"""Draw random kernels (the Canvas-style baseline) and write them out.

    python sample.py --n 20 --seed 0 --out out/samples [--placements 64x56x56,128x28x28] [--task FILE]

For every kernel: ``DIR/<hash>.json`` (the document), ``DIR/<hash>.py`` (standalone
PyTorch source) and ``DIR/<hash>.png`` (its picture); then a summary table.
Bad arguments print one line and exit with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"sample.py: error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, required=True, help="number of kernels")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--placements", default=None, help="CxHxW,... (default: ResNet-18's four 3x3 stages)")
    p.add_argument("--task", default=None, help="task config (its placements and budget)")
    p.add_argument("--steps", default="5-25", help="primitive-count range (default 5-25)")
    p.add_argument("--widths", default="2-8", help="width range (default 2-8)")
    p.add_argument("--family-first", action="store_true", help="draw a family first, then a variant")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG pictures (faster)")
    p.add_argument("--sizes", choices=("fill", "max_flops", "max_capacity", "feasible"), default="fill",
                   help="fill: sizes that fill the budget that decides speed (default: max_capacity with a latency budget, "
                        "else max_flops); feasible: the first legal sizes")
    return p.parse_args(argv)


def _range(text: str, field: str) -> tuple:
    from kasrl.errors import ConfigError

    parts = text.split("-")
    if len(parts) != 2 or not all(x.strip().isdigit() for x in parts) or int(parts[0]) > int(parts[1]) or int(parts[0]) < 1:
        raise ConfigError(f"`{field}` must be LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return int(parts[0]), int(parts[1])


def _check_out(out: str) -> Path:
    from kasrl.errors import ConfigError

    path = Path(out)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"`--out` {out}: {existing} is not a writable folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"`--out` {out} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".kasrl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"`--out` {out} is not writable ({e.strerror or e})") from None
    return path


def setup(args: argparse.Namespace):
    """Validate everything before anything is written; returns (space, out, steps, widths)."""
    from kasrl.errors import ConfigError
    from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget, parse_placements
    from kasrl.space import SearchSpace, SpaceConfig

    if args.n < 1:
        raise ConfigError(f"`--n` must be a positive number of kernels, got {args.n}")
    steps = _range(args.steps, "--steps")
    widths = _range(args.widths, "--widths")
    out = _check_out(args.out)
    budget = Budget()
    placements = RESNET18_PLACEMENTS
    latency = None
    if args.task:
        from kasrl.eval.task_space import task_search_setup

        placements, budget, latency = task_search_setup(args.task)
    if args.placements:
        placements = parse_placements(args.placements, "--placements")
    config = SpaceConfig(max_steps=max(steps[1], SpaceConfig().max_steps), max_width=max(widths[1], 1))
    return SearchSpace(placements, budget, config, latency=latency), out, steps, widths


def main(argv=None) -> int:
    """Sample, save and summarise kernels; returns the exit status."""
    args = parse_args(argv)
    from kasrl.errors import KasrlError

    try:
        space, out, steps, widths = setup(args)
    except KasrlError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2

    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from agents.random_sampler import RandomSampler
    from kasrl.analysis import cost_report
    from kasrl.codegen.draw import draw_kernel
    from kasrl.codegen.source import kernel_source
    from kasrl.ir.canonical import kernel_hash, short_id
    from kasrl.ir.serialize import save_kernel

    sampler = RandomSampler(space, args.seed, steps, widths, args.family_first, args.sizes)
    rows = []
    families = Counter()
    start = time.perf_counter()
    for _ in tqdm(range(args.n), desc="sampling", unit="kernel"):
        kernel, _actions = sampler.sample_actions()
        sid = short_id(kernel_hash(kernel))
        save_kernel(kernel, out / f"{sid}.json")
        (out / f"{sid}.py").write_text(kernel_source(kernel, doc=f"kasrl kernel {sid}"))
        if not args.no_pictures:
            draw_kernel(kernel, out / f"{sid}.png", f"kernel {sid}")
        fam = kernel.families()
        families.update(fam.keys())
        reports = [cost_report(kernel, p) for p in space.placements]
        rows.append((sid, kernel, fam, reports))
    elapsed = time.perf_counter() - start

    table = Table(title=f"{args.n} random kernels at {', '.join(str(p) for p in space.placements)} (seed {args.seed})")
    for col in ("kernel", "prims", "width", "depth", "FLOPs vs conv", "params vs conv", "families"):
        table.add_column(col, justify="right" if col not in ("kernel", "families") else "left")
    for sid, kernel, fam, reports in rows:
        fr = max(r["flops_ratio"] for r in reports)
        pr = max(r["params_ratio"] for r in reports)
        top = ", ".join(f"{k} {v}" for k, v in sorted(fam.items(), key=lambda kv: (-kv[1], kv[0])))
        table.add_row(sid, str(kernel.n_primitives), str(kernel.peak_width), str(kernel.depth()), f"{fr:.3f}x", f"{pr:.3f}x", top)
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print("families used (kernels containing each): " + ", ".join(f"{k} {v}" for k, v in families.most_common()))
    console.print(f"{args.n} kernels in {elapsed:.1f} s ({args.n / elapsed:.1f} per second), written to {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
