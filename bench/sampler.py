"""Benchmark: the random sampler's throughput and the quality of what it draws, with the latency budget off and on.

    python bench/sampler.py [--kernels 200] [--quality 100] [--latency 0.8] [--profile FILE] [--seed 0]

Single-threaded, allocator pinned (kasrl/eval/latency.py), ResNet-18's four 3x3 placements.
Each figure is printed for the space without a latency budget and with ``budget.latency``
(the latency model's prediction at most ``--latency`` x the 3x3 convolution's at every
placement; the model is this device's profile for batch 1 at these placements, calibrated
here first when missing, ~150 s). Both runs in one process, one after the other.

Throughput (anchor: Canvas's C++ sampler gave 2.6 valid kernels/s/core with 1.6%
of attempts succeeding; target 26/s/core with zero rejected attempts, and at least
1,000 environment steps per second with masks):
* valid finished (closed and CP-SAT-solved) kernels per second, rejected attempts,
  for the first legal sizes and for CP-SAT sizes that fill the budget that decides
  speed (``sizes="fill"``: the most FLOPs without a latency budget, the most
  parameters then FLOPs within it);
* environment steps per second with exact masks (random legal actions, analytic reward).

Quality (Canvas, measured the same way: ResNet-18 placements 94% runnable, 31% within
the conv's FLOPs, 13% faster, median speedup 0.048x; 5-12% both faster and doing >= 0.1x
the conv's FLOPs; targets with the latency budget: >= 50% faster, >= 40% faster with
>= 0.1x its FLOPs, median >= 1x): each kernel (sizes ``fill``) timed at 64x56x56,
batch 1, interleaved with a 3x3 convolution in the same process. Printed for uniform
and family-first sampling, with the median speedup split by what the kernels contain.
"""

from __future__ import annotations

import argparse
import time

from common import device_line, med, setup


def throughput(space, n: int, seed: int, family_first: bool, sizes: str) -> tuple:
    from agents.random_sampler import RandomSampler

    sampler = RandomSampler(space, seed=seed, family_first=family_first, sizes=sizes)
    for _ in range(20):  # warm the caches: the steady state of a long search
        sampler.sample_actions()
    rejected = 0
    t = time.perf_counter()
    for _ in range(n):
        try:
            k, _ = sampler.sample_actions()
            assert k.is_finished and k.sizes is not None
        except Exception:  # noqa: BLE001 - a rejected attempt is what we count
            rejected += 1
    return n / (time.perf_counter() - t), rejected


def env_steps(space, seconds: float, seed: int, sizes: str) -> tuple:
    import gymnasium as gym

    import envs

    env = gym.make(envs.ENV_ID, space=space, sizes=sizes)
    env.action_space.seed(seed)
    env.reset(seed=seed)

    def run(duration: float) -> tuple:
        steps = episodes = 0
        t = time.perf_counter()
        while time.perf_counter() - t < duration:
            _, _, done, _, _ = env.step(env.action_space.sample())
            steps += 1
            if done:
                episodes += 1
                env.reset()
        return steps / (time.perf_counter() - t), episodes

    run(min(5.0, seconds))  # warm the caches: the steady state of a long run
    return run(seconds)


def kernel_features(k, p) -> dict:
    from kasrl.analysis import cost_report
    from kasrl.ir.shape import volume
    from kasrl.ir.sizes import evaluate

    peak = max(float(evaluate(volume(n.shape), k.sizes, p.c, p.h, p.w)) for n in k.nodes) / (p.c * p.h * p.w)
    fam = k.families()
    return {
        "flops_ratio": cost_report(k, p)["flops_ratio"],
        "peak_tensor": peak,
        "unfold": fam.get("unfold", 0) > 0,
        "bmm": fam.get("bmm", 0) > 0,
        "primitives": k.n_primitives,
    }


def quality(space, n: int, seed: int, family_first: bool) -> list:
    import torch

    from agents.random_sampler import RandomSampler
    from kasrl.codegen.module import build_module
    from kasrl.eval.latency import conv3x3, time_pair

    p = space.placements[0]
    sampler = RandomSampler(space, seed=seed, family_first=family_first, sizes="fill")
    x = torch.randn(1, p.c, p.h, p.w)
    conv = conv3x3(p.c)
    rows = []
    for _ in range(n):
        k, _ = sampler.sample_actions()
        row = kernel_features(k, p)
        try:
            m = build_module(k, *p)
            t = time_pair(m, conv, x, repeats=5, warmup=1, time_s=0.3)
            row.update(runnable=True, speedup=t.speedup)
        except Exception:  # noqa: BLE001 - counted as not runnable
            row.update(runnable=False, speedup=0.0)
        rows.append(row)
    return rows


def report_quality(label: str, rows: list) -> None:
    ok = [r for r in rows if r["runnable"]]
    sp = [r["speedup"] for r in ok]
    within = sum(r["flops_ratio"] <= 1.0 + 1e-9 for r in rows) / len(rows)
    faster = sum(s > 1.0 for s in sp) / len(rows)
    useful = sum(r["speedup"] > 1.0 and r["flops_ratio"] >= 0.1 for r in ok) / len(rows)
    print(f"  {label}: runnable {len(ok) / len(rows):.0%}, within FLOPs budget {within:.0%}, faster than the conv {faster:.0%}, "
          f"faster with >= 0.1x its FLOPs {useful:.0%}, median speedup {med(sp):.3f}x, best {max(sp):.2f}x")

    def split(name, pred):
        a = [r["speedup"] for r in ok if pred(r)]
        b = [r["speedup"] for r in ok if not pred(r)]
        print(f"      {name:<34} yes: n={len(a):>3} median {med(a):.3f}x | no: n={len(b):>3} median {med(b):.3f}x")

    split("contains unfold", lambda r: r["unfold"])
    split("peak tensor >= 4x the input", lambda r: r["peak_tensor"] >= 4)
    split("FLOPs >= 0.5x the conv", lambda r: r["flops_ratio"] >= 0.5)
    split("contains bmm", lambda r: r["bmm"])
    split(">= 15 primitives", lambda r: r["primitives"] >= 15)


def latency_model(args, placements):
    """This device's latency model for batch 1 at ``placements`` (``--profile``, or the default one, calibrated when missing)."""
    from kasrl.latency import default_profile_path, fingerprint, load_profile
    from kasrl.latency.calibrate import calibrate

    fp = fingerprint("cpu", 1, 1)
    path = args.profile or default_profile_path(fp, placements)
    try:
        return load_profile(path, expect=fp), path
    except Exception:  # noqa: BLE001 - missing: calibrate (a bad named one fails again below)
        if args.profile:
            raise
    print(f"calibrating a latency model for batch 1 at {', '.join(map(str, placements))} ({args.calibrate_s:.0f} s) -> {path}", flush=True)
    return calibrate(placements, 1, 1, "cpu", 0, args.calibrate_s, path, progress=False), path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", type=int, default=200)
    ap.add_argument("--quality", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of environment steps per setting")
    ap.add_argument("--latency", type=float, default=0.8, help="budget.latency of the run with the budget on")
    ap.add_argument("--profile", default=None, help="latency profile for batch 1 (default: this device's, calibrated when missing)")
    ap.add_argument("--calibrate-s", type=float, default=150.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fp = setup()
    from kasrl.solver.budget import RESNET18_PLACEMENTS, Budget
    from kasrl.space import SearchSpace

    print(device_line(fp))
    model, path = latency_model(args, RESNET18_PLACEMENTS)
    print(f"latency model: {path}")
    settings = [("latency budget off", SearchSpace(RESNET18_PLACEMENTS)),
                (f"latency budget {args.latency:g}x", SearchSpace(RESNET18_PLACEMENTS, Budget(latency=args.latency), latency=model))]
    for label, space in settings:
        print(f"== {label}")
        for sizes, what in (("feasible", "first legal sizes"), ("fill", "CP-SAT sizes filling the budget that decides speed")):
            for ff in (False, True):
                rate, rejected = throughput(space, args.kernels, args.seed, ff, sizes)
                print(f"sampler ({'family-first' if ff else 'uniform'}, {what}): {rate:.1f} valid kernels/s/core, "
                      f"{rejected} rejected attempts of {args.kernels}", flush=True)
        for sizes, what in (("feasible", "first legal sizes"), ("fill", "CP-SAT budget-filling sizes, one optimisation per episode")):
            steps, eps = env_steps(space, args.seconds, args.seed, sizes)
            print(f"environment (sizes={sizes!r}: {what}): {steps:.0f} steps/s with exact masks, analytic reward "
                  f"({eps} episodes in {args.seconds:.0f} s)", flush=True)
        if args.quality:
            where = ", ".join(map(str, RESNET18_PLACEMENTS))
            print(f"quality of {args.quality} kernels at {where}, timed at {RESNET18_PLACEMENTS[0]} batch 1:")
            for ff in (False, True):
                report_quality("family-first" if ff else "uniform     ", quality(space, args.quality, args.seed, ff))


if __name__ == "__main__":
    main()
