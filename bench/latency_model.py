"""Benchmark: how well a calibrated latency model predicts measured kernel latency.

    python bench/latency_model.py [--kernels 200] [--seconds 150] [--measure-s 0.25] [--resnet-batch 1]
                                  [--dir DIR] [--seed 0] [--heldout-seed 1] [--sets task,resnet18]

Single-threaded, allocator pinned (docs/architecture.md, section 7). For the default task's
placements (``fashion_mnist_cnn``: 32x14x14 and 64x7x7, its latency batch) and
separately for ResNet-18's four 3x3 placements (batch ``--resnet-batch``):

1. calibrates a model (:func:`kasrl.latency.calibrate.calibrate`, ``--seconds`` of
   measuring; prints how long it took and the fit's own figures);
2. draws ``--kernels`` held-out kernels with another seed (never used in
   calibration) and measures each at every placement against a 3x3 convolution
   with :func:`kasrl.eval.latency.time_pair` (``--measure-s`` seconds a run);
3. prints the Spearman rank correlation between predicted and measured kernel
   latency (target >= 0.9) and the median absolute relative error (target <= 15%),
   over all placements and per placement, and the 3x3 convolution's own
   prediction error (against the median of its measured times there); the same
   figures again for the latency relative to the convolution timed in the same
   run (what :func:`~kasrl.eval.latency.time_pair` measures robustly on a shared host).

``--dir`` keeps the profiles, their samples and the held-out measurements: a rerun
with the same directory resumes the calibrations and reuses the measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from common import device_line, med, setup


def heldout(space, placements, batch: int, n: int, seed: int, measure_s: float, cache: Path) -> list:
    """``[(kernel, placement, measured kernel s, measured conv s)]`` for ``n`` held-out kernels at every placement."""
    import torch

    from kasrl.codegen.module import build_module
    from kasrl.eval.latency import conv3x3, time_pair
    from kasrl.latency.calibrate import random_kernel

    known = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            known[(r["index"], r["placement"])] = r
    rows = []
    convs = {p: conv3x3(p.c) for p in placements}
    inputs = {p: torch.randn(batch, p.c, p.h, p.w) for p in placements}
    start = time.perf_counter()
    for i in range(n):
        k = random_kernel(space, seed, i)
        for p in placements:
            r = known.get((i, str(p)))
            if r is None:
                t = time_pair(build_module(k, *p), convs[p], inputs[p], repeats=5, warmup=1, time_s=measure_s, max_time_s=measure_s)
                r = {"index": i, "placement": str(p), "kernel_s": t.kernel_ms / 1e3, "conv_s": t.baseline_ms / 1e3,
                     "spread": t.speedup_spread}
                with open(cache, "a") as f:
                    f.write(json.dumps(r) + "\n")
            rows.append((k, p, r["kernel_s"], r["conv_s"]))
        if (i + 1) % 50 == 0:
            print(f"    measured {i + 1}/{n} held-out kernels ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def report(model, rows, placements) -> None:
    """Print Spearman and median |relative error| of predicted against measured latency, overall and per placement.

    Twice: the kernel's latency itself, and the kernel's latency relative to the 3x3
    convolution timed in the same interleaved run (predicted: relative to the
    predicted convolution), which the host's load shifts far less.
    """
    import numpy as np
    from scipy.stats import spearmanr

    def figures(sub) -> str:
        pred = np.array([model.predict(k, p) for k, p, _, _ in sub])
        conv = np.array([model.predict_conv3x3(p) for _, p, _, _ in sub])
        meas = np.array([m for _, _, m, _ in sub])
        meas_conv = np.array([c for _, _, _, c in sub])
        out = []
        for a, b in ((pred, meas), (pred / conv, meas / meas_conv)):
            out.append(f"Spearman {spearmanr(a, b).statistic:.3f}, median |rel. error| {np.median(np.abs(a / b - 1)):.1%} "
                       f"(median predicted/measured {np.median(a / b):.3f})")
        return "latency: " + out[0] + " | relative to the conv: " + out[1]

    print(f"  all placements, n={len(rows)}: {figures(rows)}")
    for p in placements:
        sub = [r for r in rows if r[1] == p]
        conv_meas = med([c for _, _, _, c in sub])
        conv_pred = model.predict_conv3x3(p)
        print(f"    {str(p):>10}, n={len(sub)}: {figures(sub)}")
        print(f"    {'':>10}  3x3 conv predicted {conv_pred * 1e3:.3f} ms vs measured {conv_meas * 1e3:.3f} ms (median of its runs): "
              f"{conv_pred / conv_meas - 1:+.1%}")


def run_set(label: str, placements, batch: int, budget, args, root: Path) -> None:
    """Calibrate for one placement set, measure the held-out kernels there and print the figures."""
    from kasrl.latency.calibrate import calibrate
    from kasrl.latency.profile import load_profile
    from kasrl.space import SearchSpace

    print(f"{label}: placements {', '.join(map(str, placements))}, batch {batch}")
    out = root / f"{label}.json"
    t = time.perf_counter()
    model = calibrate(placements, batch, 1, "cpu", args.seed, args.seconds, out, progress=False, budget=budget)
    took = time.perf_counter() - t
    cal = json.loads(out.read_text())["calibration"]
    res = cal["residuals"]
    print(f"  calibration: {took:.0f} s in this run ({cal['seconds']:.0f} s of measuring in all), {cal['samples']['kernels']} kernels, "
          f"{cal['samples']['nodes']} nodes, {cal['samples']['whole_kernels']} whole kernels; profile {out}")
    w = res["whole"]
    nan = float("nan")
    print(f"  fit on the calibration kernels: common in-kernel scale {w.get('common_scale', nan):.3f}, "
          f"median |relative error| {w.get('median_rel_error', nan):.1%}, Spearman {w.get('spearman') or nan:.3f}; "
          f"time unit 1e{model.unit_exp} s")
    assert load_profile(out, expect=model.fingerprint) == model
    space = SearchSpace(placements, budget)
    t = time.perf_counter()
    cache = root / f"{label}.heldout-{args.heldout_seed}.jsonl"
    rows = heldout(space, placements, batch, args.kernels, args.heldout_seed, args.measure_s, cache)
    print(f"  held-out: {args.kernels} kernels (seed {args.heldout_seed}) at {len(placements)} placements, "
          f"measured in {time.perf_counter() - t:.0f} s (time_pair, {args.measure_s:g} s a run)")
    report(model, rows, placements)


def main() -> None:
    """Parse the arguments, calibrate and measure both placement sets."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="fashion_mnist_cnn")
    ap.add_argument("--kernels", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=150.0, help="calibration time budget per placement set")
    ap.add_argument("--measure-s", type=float, default=0.25, help="time_pair run length of each held-out measurement")
    ap.add_argument("--resnet-batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-seed", type=int, default=1)
    ap.add_argument("--dir", default=None, help="keep profiles, samples and measurements here (default: a temporary folder)")
    ap.add_argument("--sets", default="task,resnet18", help="which placement sets: task (the --task's), resnet18 or both")
    args = ap.parse_args()
    fp = setup()
    print(device_line(fp))
    from kasrl.eval.task_space import task_search_setup
    from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget
    from kasrl.tasks import load_task

    task = load_task(args.task)
    placements, budget, _ = task_search_setup(task, latency=False)
    budget = dataclasses.replace(budget, latency=None)  # held-out kernels are drawn as calibration draws them: no latency budget
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        sets = {s.strip() for s in args.sets.split(",")}
        if "task" in sets:
            run_set(args.task, placements, task.latency.batch, budget, args, root)
        if "resnet18" in sets:
            run_set("resnet18", RESNET18_PLACEMENTS, args.resnet_batch, Budget(), args, root)


if __name__ == "__main__":
    main()
