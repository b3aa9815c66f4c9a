"""Calibrating a device's latency model: measure random kernels, fit the coefficients.

What is measured (one *sample* = one random kernel at one placement):

* every live node of the kernel alone, at its real input shape(s), and the
  replaced 3x3 convolution (``nn.Conv2d`` C -> C, the op
  :func:`kasrl.eval.latency.conv3x3` builds), interleaved in rounds
  (:func:`kasrl.latency.runner.time_interleaved`);
* the whole kernel module against that convolution with the project's harness
  :func:`kasrl.eval.latency.time_pair` (short runs: a low precision is enough).

Kernels are drawn by a seeded random walk over the legal actions of a
:class:`~kasrl.space.SearchSpace` for the placements (first legal sizes); sample
``j`` is kernel ``j`` at placement ``j mod len(placements)``, so the same seed
gives the same sample list. Each measured sample is appended to a JSONL file
beside the profile as soon as it is taken; a calibration that was interrupted
skips the samples already there and spends only the rest of its time budget.

How the coefficients are fitted (:func:`fit_model`), with non-negative least
squares on relative errors (each row divided by its measured time, since
latencies span orders of magnitude):

1. per op kind, ``time(node alone) ~ a + b * FLOPs + c * bytes`` over the nodes
   of that kind (a kind with too few nodes borrows the fit of its family, or of
   all nodes); the 3x3 convolution's own rows, one per placement at its quiet
   time, weigh heavily in its kind (``conv.k9``);
2. over the whole kernels, ``time(kernel) ~ sum over kinds k of s_k * (stage-1
   prediction of its nodes of kind k) + a[kernel] + c[kernel] * bytes(input and
   output)``: the scales ``s_k`` take what timing ops alone misses (measured
   here: the ops of a kernel run 20-30% slower in it than alone, as their inputs
   arrive strided and their neighbours evict the caches), and the ``kernel``
   pseudo-kind the module's own overhead. A whole kernel's time is read relative
   to the convolution timed in the same interleaved run, which is what
   :func:`~kasrl.eval.latency.time_pair` measures well on a noisy host.

On this 2-core host, shared with other work, a hundred samples fit about as
well as several hundred, while the measured sum of a kernel's ops alone still
scatters by ~20% around its measured time: the time budget buys precision per
sample (half-second runs) rather than more samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kasrl.errors import KasrlError
from kasrl.ir.graph import KernelGraph
from kasrl.latency.model import (
    ELEMENT_SIZES,
    FEATURES,
    KERNEL,
    KINDS,
    LatencyModel,
    choose_unit,
    conv3x3_features,
    conv3x3_kind,
    kernel_features,
    node_features,
    op_kind,
)
from kasrl.latency.profile import ProfileError, default_profile_path, fingerprint, save_profile
from kasrl.solver.budget import Budget, Placement, check_placements

__all__ = [
    "DEFAULT_SETTINGS",
    "random_kernel",
    "samples_path",
    "read_samples",
    "measure_sample",
    "fit_relative",
    "fit_model",
    "refine",
    "calibrate",
]

#: How samples are measured (recorded in the profile; part of the samples file's identity).
DEFAULT_SETTINGS = {
    "session_s": 0.5,  # nodes + the 3x3 convolution, interleaved, at least this long
    "whole_s": 0.15,  # time_pair of the whole kernel against the convolution
    "rounds": 3,  # interleaved rounds at least
    "quantile": 0.01,  # where each op's per-call times are read (as time_pair)
    "whole_every": 1,  # time the whole kernel in every n-th sample
}

#: A kind fitted on fewer node rows than this borrows a pooled fit.
MIN_ROWS = 6
#: Weight of each placement's 3x3-convolution row in its kind's fit, in node rows.
CONV3X3_WEIGHT = 1000.0
#: How strongly each kind's in-kernel scale is pulled towards the common one (see :func:`fit_model`).
SHRINK = 0.1
#: How many whole-kernel samples the calibrated model counts as, when :func:`refine` refits it.
REFINE_PRIOR = 20.0
_SAMPLES_SCHEMA = "kasrl.latency-samples"


# --------------------------------------------------------------------------- sampling
def random_kernel(space, seed: int, index: int, max_steps: int | None = None) -> KernelGraph:
    """Kernel ``index`` of the seeded random walk: uniform legal actions until a drawn step count, then finish.

    The walk's generator is seeded by ``(seed, index)`` alone, so kernel ``index``
    does not depend on which other kernels were drawn. Sizes are the first legal
    ones (``space.finish(state, "feasible")``).
    """
    rng = random.Random(f"kasrl-latency/{seed}/{index}")
    cfg = space.config
    target = rng.randint(cfg.min_steps, max_steps or cfg.max_steps)
    s = space.reset()
    while True:
        mask = space.action_mask(s)
        legal = np.flatnonzero(mask)
        others = legal[legal != 0]
        if (s.steps >= target and mask[0]) or not len(others):
            return space.finish(s, "feasible")
        s = space.apply(s, int(others[rng.randrange(len(others))]))


def samples_path(profile_path: str | os.PathLike) -> Path:
    """The JSONL file of a profile's measured samples (beside it)."""
    p = Path(profile_path)
    return p.with_name(p.stem + ".samples.jsonl")


def _header(fp: Mapping[str, Any], placements: Sequence[Placement], seed: int, settings: Mapping[str, Any], budget: Budget) -> dict:
    return {
        "schema": _SAMPLES_SCHEMA,
        "fingerprint": dict(fp),
        "placements": [str(p) for p in placements],
        "seed": seed,
        "settings": dict(settings),
        "budget": [budget.flops, budget.params, budget.max_tensor],
    }


def read_samples(path: str | os.PathLike, header: Mapping[str, Any] | None = None) -> tuple:
    """``(header, samples)`` of a samples file, ``(None, [])`` when it is absent.

    With ``header``, a file written for another setup reads as having no samples.
    A last line cut short (an interrupted write) is ignored, and so is a line that
    is not a sample record.

    Raises:
        ProfileError: when a line other than the last is not JSON.
    """
    path = Path(path)
    if not path.exists():
        return None, []
    lines = path.read_text().splitlines()
    out = []
    head = None
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break  # cut short by an interruption
            raise ProfileError(f"latency samples {path}: line {i + 1} is not JSON") from None
        if i == 0:
            head = rec
            if header is not None and rec != json.loads(json.dumps(dict(header))):
                return rec, []
            continue
        if isinstance(rec, dict) and type(rec.get("index")) is int and (rec.get("error") or isinstance(rec.get("nodes"), list)):
            out.append(rec)
    return head, out


def _rewrite(path: Path, header: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> None:
    """Write a samples file from scratch (atomically)."""
    from kasrl.latency.profile import write_atomic

    lines = [json.dumps(dict(header), sort_keys=True)] + [json.dumps(dict(s), sort_keys=True, allow_nan=False) for s in samples]
    write_atomic(path, "\n".join(lines) + "\n")


def _append(path: Path, rec: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- measuring
def measure_sample(graph: KernelGraph, placement: Placement, batch: int, threads: int = 1, device: str = "cpu",
                   settings: Mapping[str, Any] | None = None, whole: bool = True, seed: int = 0) -> dict:
    """Time a solved kernel's nodes alone (with the 3x3 convolution interleaved) and, if ``whole``, the kernel itself.

    Returns a sample record: ``nodes`` as ``[primitive name, attributes, [1, FLOPs, bytes], seconds]``
    (the kind is worked out when fitting, so a sample outlives a change of kinds),
    ``conv3x3`` (seconds, from the interleaved rounds) and ``whole`` (``{"kernel":
    seconds, "conv3x3": seconds}`` from :func:`~kasrl.eval.latency.time_pair`, or None).
    """
    import torch

    from kasrl.codegen.module import build_module
    from kasrl.eval.latency import conv3x3, time_pair
    from kasrl.latency.runner import node_callable, time_interleaved

    st = {**DEFAULT_SETTINGS, **(settings or {})}
    p = Placement(*placement)
    gen = torch.Generator().manual_seed(seed)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        nodes = graph.live_nodes()[1:]
        conv = conv3x3(p.c).to(device).eval()
        x = torch.randn(batch, p.c, p.h, p.w, generator=gen).to(device)
        with torch.no_grad():
            fns = [lambda: conv(x)] + [node_callable(graph, n, *p, batch, device, generator=gen) for n in nodes]
            times = time_interleaved(fns, st["session_s"], st["rounds"], quantile=st["quantile"], device=device)
        del fns
        rec: dict = {
            "conv3x3": times[0],
            "nodes": [
                [n.prim.name, n.prim.attrs, list(node_features(graph, n, p, batch)), t] for n, t in zip(nodes, times[1:], strict=True)
            ],
            "whole": None,
        }
        if whole:
            module = build_module(graph, *p).to(device)
            tp = time_pair(module, conv, x, repeats=5, warmup=1, time_s=st["whole_s"], threads=threads, quantile=st["quantile"])
            rec["whole"] = {"kernel": tp.kernel_ms / 1e3, "conv3x3": tp.baseline_ms / 1e3}
        return rec
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- fitting
def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin ||a x - b||`` over ``x >= 0`` (scipy's NNLS; columns scaled to 1 first: FLOPs and calls differ by 1e9)."""
    from scipy.optimize import nnls

    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(a / scale, b, maxiter=50 * a.shape[1])
    return x / scale


def fit_relative(rows: np.ndarray, times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Non-negative ``x`` minimising ``sum(weights * (rows @ x / times - 1) ** 2)`` (relative errors)."""
    w = np.ones(len(times)) if weights is None else np.sqrt(weights)
    return _solve(rows / times[:, None] * w[:, None], w)


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _kinds_of(samples: Sequence[Mapping[str, Any]]) -> list:
    """Per sample, ``[(kind, features, seconds)]`` of its nodes (kinds worked out from the primitives)."""
    from kasrl.ir.primitives import primitive_from_attrs

    cache: dict = {}
    out = []
    for s in samples:
        rows = []
        for name, attrs, f, t in s["nodes"]:
            key = (name, tuple(sorted(attrs.items())))
            kind = cache.get(key)
            if kind is None:
                kind = cache[key] = op_kind(primitive_from_attrs(name, attrs))
            rows.append((kind, np.asarray(f, dtype=float), float(t)))
        out.append(rows)
    return out


def _placement(text: str) -> Placement:
    return Placement(*(int(v) for v in text.split("x")))


def _fit_alone(rows: Mapping[str, list], kinds: Sequence[str]) -> tuple:
    """Stage 1: per kind, ``a + b * FLOPs + c * bytes`` of the op alone (relative NNLS).

    A kind with fewer than :data:`MIN_ROWS` rows is fitted on its family's rows
    (``conv.new.k49.dilated`` -> ``conv.new.k49`` -> ``conv.new`` -> ``conv``), or on every row.
    """
    everything = [r for rs in rows.values() for r in rs]
    coefs, report = {}, {}
    for kind in kinds:
        own = rows.get(kind, [])
        pool, pooled, prefix = own, "", kind
        while len(pool) < MIN_ROWS and prefix:
            prefix = prefix.rpartition(".")[0]
            pool = [r for k, rs in rows.items() if k == prefix or k.startswith(prefix + ".") for r in rs] if prefix else everything
            pooled = prefix or "all"
        if pool:
            f, t, w = (np.array(col) for col in zip(*pool, strict=True))
            coefs[kind] = fit_relative(f, t, w)
        else:
            coefs[kind] = np.zeros(len(FEATURES))
        report[kind] = {"n": len(own), "pooled": pooled}
        if own:
            pred = np.array([f for f, _, _ in own]) @ coefs[kind]
            report[kind]["median_rel_error"] = float(np.median(np.abs(pred / np.array([t for _, t, _ in own]) - 1)))
    return coefs, report


def _fit_scales(by_kind: np.ndarray, kf: np.ndarray, t: np.ndarray) -> tuple:
    """Stage 2: ``(scale per kind column, [kernel per call, per byte], common scale)`` from whole kernels.

    ``by_kind[i, j]``: kernel i's stage-1 prediction summed over its nodes of kind j;
    ``kf``: the ``kernel`` pseudo-kind's ``(1, bytes)``; ``t``: measured times. One scale
    for every kind is fitted first; each kind's own scale is then pulled towards it
    by one extra row ``SHRINK * sqrt(n) * (s_k - s) = 0``, so a kind seen in few
    kernels keeps about the common scale.
    """
    x = fit_relative(np.column_stack([by_kind.sum(axis=1), kf]), t)
    common = float(x[0]) if x[0] > 0 else 1.0
    present = [j for j in range(by_kind.shape[1]) if by_kind[:, j].any()]
    a = np.column_stack([by_kind[:, present], kf]) / t[:, None]
    weight = SHRINK * math.sqrt(len(t))
    prior = np.zeros((len(present), a.shape[1]))
    prior[np.arange(len(present)), np.arange(len(present))] = weight
    x = _solve(np.vstack([a, prior]), np.concatenate([np.ones(len(t)), np.full(len(present), weight * common)]))
    scales = np.full(by_kind.shape[1], common)
    scales[present] = x[: len(present)]
    return scales, x[len(present):], common


def fit_model(samples: Iterable[Mapping[str, Any]], batch: int, dtype: str = "float32", fp: Mapping[str, Any] | None = None,
              placements: Sequence[Placement] = ()) -> tuple:
    """Fit a :class:`LatencyModel` to measured samples; returns ``(model, residuals)``.

    Whole-kernel times are read relative to the convolution timed in the same
    :func:`~kasrl.eval.latency.time_pair` run (the ratio is what that harness
    measures well) and multiplied by the convolution's quiet time at the
    placement (the 10th percentile of all its timings there).

    ``residuals`` reports, per kind, the nodes fitted, whether the fit was pooled,
    the median absolute relative error of the nodes alone and the kind's
    in-kernel scale; for the whole kernels, their count, the median absolute
    relative error and the Spearman rank correlation; and the 3x3 convolution's
    relative error at each placement. ``placements`` (optional) are also used to
    choose the time unit (the 3x3 convolution must stay below 1e15 units at each).

    Raises:
        ValueError: when there is no usable sample.
    """
    samples = [s for s in samples if not s.get("error")]
    if not samples:
        raise ValueError("no measured sample to fit")
    elsize = ELEMENT_SIZES[dtype]
    per_sample = _kinds_of(samples)
    conv_at: dict = defaultdict(list)
    for s in samples:
        conv_at[s["placement"]].append(s["conv3x3"])
        if s.get("whole"):
            conv_at[s["placement"]].append(s["whole"]["conv3x3"])
    conv_time = {p: float(np.percentile(ts, 10)) for p, ts in conv_at.items()}

    rows: dict = defaultdict(list)
    for nodes in per_sample:
        for kind, f, t in nodes:
            if t > 0:
                rows[kind].append((f, t, 1.0))
    rows[conv3x3_kind()].extend(
        (np.asarray(conv3x3_features(_placement(p), batch, elsize), dtype=float), t, CONV3X3_WEIGHT) for p, t in conv_time.items()
    )
    node_kinds = [k for k in KINDS if k != KERNEL]
    alone, report = _fit_alone(rows, node_kinds)

    whole = [(s, nodes) for s, nodes in zip(samples, per_sample, strict=True) if s.get("whole")]
    scales = dict.fromkeys(node_kinds, 1.0)
    kernel = np.zeros(len(FEATURES))
    whole_report: dict = {"n": len(whole)}
    if whole:
        t = np.array([s["whole"]["kernel"] / s["whole"]["conv3x3"] * conv_time[s["placement"]] for s, _ in whole])
        by_kind = np.zeros((len(whole), len(node_kinds)))
        for i, (_, nodes) in enumerate(whole):
            for kind, f, _ in nodes:
                by_kind[i, node_kinds.index(kind)] += float(np.dot(alone[kind], f))
        kf = np.array([kernel_features(_placement(s["placement"]), batch, elsize) for s, _ in whole], dtype=float)[:, [0, 2]]
        per_kind, (k_call, k_byte), common = _fit_scales(by_kind, kf, t)
        scales = {k: float(v) for k, v in zip(node_kinds, per_kind, strict=True)}
        kernel = np.array([k_call, 0.0, k_byte])
        pred = by_kind @ per_kind + kf @ np.array([k_call, k_byte])
        whole_report.update(common_scale=common, median_rel_error=float(np.median(np.abs(pred / t - 1))), spearman=_spearman(pred, t),
                            additivity=float(np.median(np.array([sum(x for *_, x in nodes) for _, nodes in whole]) / t)))
    for k in node_kinds:
        report[k]["scale"] = scales[k]
    final = {k: tuple(float(v) for v in alone[k]) for k in node_kinds}
    final[KERNEL] = tuple(float(v) for v in kernel)
    conv_coef = final[conv3x3_kind()]
    largest = max(float(np.dot(conv_coef, conv3x3_features(p, batch, elsize))) for p in (*placements, *map(_placement, conv_time)))
    model = LatencyModel(final, batch, dtype, dict(fp or {}), choose_unit(final, largest, scales), scales)
    residuals = {
        "nodes": report,
        "whole": whole_report,
        "conv3x3": {p: {"measured_s": conv_time[p], "rel_error": model.predict_conv3x3(_placement(p)) / conv_time[p] - 1}
                    for p in sorted(conv_time)},
    }
    return model, residuals


def _medians(pred: np.ndarray, t: np.ndarray) -> dict:
    rho = _spearman(pred, t)
    return {"median_rel_error": float(np.median(np.abs(pred / t - 1))), "spearman": rho if math.isfinite(rho) else None}


def refine(model: LatencyModel, samples: Sequence[tuple], prior: float = REFINE_PRIOR,
           placements: Sequence[Placement] = ()) -> tuple:
    """Refit a model's in-kernel scales and kernel overhead to measured whole kernels; returns ``(model, report)``.

    ``samples`` are ``(solved kernel, placement, seconds)``: what a search measured
    (see :func:`kasrl.latency.task.store_samples`). The ops' own coefficients (what a
    calibration measures alone) stay; stage 2 of :func:`fit_model` is fitted again
    on these kernels, with one extra row per coefficient pulling it towards the
    model's own value as strongly as ``prior`` samples would, so a few samples move
    the model a little and many move it as far as they show. What a search measures
    (kernels sized to fill its budget, timed at the task's placements) is what the
    calibration's first-legal-size kernels miss.

    ``report``: the samples' count and, before and after, the median absolute
    relative error and the Spearman correlation on them (in-sample).

    Raises:
        ValueError: when ``samples`` is empty.
    """
    if not samples:
        raise ValueError("no measured kernel to refine the latency model with")
    node_kinds = [k for k in KINDS if k != KERNEL]
    elsize = model.element_size
    by_kind = np.zeros((len(samples), len(node_kinds)))
    kf = np.zeros((len(samples), 2))
    t = np.array([float(s) for _, _, s in samples])
    for i, (graph, placement, _) in enumerate(samples):
        p = Placement(*placement)
        for node in graph.live_nodes()[1:]:
            kind = op_kind(node.prim)
            features = node_features(graph, node, p, model.batch, elsize)
            by_kind[i, node_kinds.index(kind)] += float(np.dot(model.coefficients[kind], features))
        kf[i] = np.asarray(kernel_features(p, model.batch, elsize), dtype=float)[[0, 2]]
    old = np.array([model.scales[k] for k in node_kinds] + [model.coefficients[KERNEL][0], model.coefficients[KERNEL][2]])
    before = _medians(by_kind @ old[: len(node_kinds)] + kf @ old[len(node_kinds):], t)
    present = [j for j in range(len(node_kinds)) if by_kind[:, j].any()] + [len(node_kinds), len(node_kinds) + 1]
    a = np.column_stack([by_kind, kf])[:, present] / t[:, None]
    # the prior: (x_j / old_j - 1)^2 per coefficient, weighing `prior` samples in all (a zero one is left free)
    anchored = [i for i, j in enumerate(present) if old[j] > 0]
    rows = np.zeros((len(anchored), len(present)))
    w = math.sqrt(prior / max(1, len(anchored)))
    for r, i in enumerate(anchored):
        rows[r, i] = w / old[present[i]]
    x = _solve(np.vstack([a, rows]), np.concatenate([np.ones(len(t)), np.full(len(anchored), w)]))
    new = old.copy()
    new[present] = x
    after = _medians(by_kind @ new[: len(node_kinds)] + kf @ new[len(node_kinds):], t)
    scales = {k: float(v) for k, v in zip(node_kinds, new[: len(node_kinds)], strict=True)}
    coefs = dict(model.coefficients)
    coefs[KERNEL] = (float(new[-2]), 0.0, float(new[-1]))
    largest = max((model.predict_conv3x3(p) for p in (*placements, *(Placement(*q) for _, q, _ in samples))), default=0.0)
    refined = LatencyModel(coefs, model.batch, model.dtype, dict(model.fingerprint), choose_unit(coefs, largest, scales), scales)
    return refined, {"n": len(samples), "prior": prior, "before": before, "after": after}


# --------------------------------------------------------------------------- the driver
def calibrate(placements: Sequence[Placement], batch: int = 8, threads: int = 1, device: str = "cpu", seed: int = 0,
              time_budget_s: float = 150.0, out: str | os.PathLike | None = None, progress: bool = True,
              budget: Budget | None = None, settings: Mapping[str, Any] | None = None, max_samples: int | None = None,
              space_placements: Sequence[Placement] | None = None) -> LatencyModel:
    """Measure random kernels at ``placements`` for about ``time_budget_s`` seconds, fit, and write the profile.

    Args:
        placements: where kernels are used (each sample is timed at one of them).
        batch: images per forward pass.
        threads: torch intra-op threads while timing.
        device: ``"cpu"`` or a CUDA device.
        seed: the sample list's seed (the same seed gives the same samples).
        time_budget_s: seconds of measuring (those already spent in the samples file count).
        out: the profile's path (default: :func:`~kasrl.latency.profile.default_profile_path`);
            samples go to :func:`samples_path` beside it.
        progress: show a tqdm progress bar (on stderr).
        budget: the search budget the random kernels respect (default :class:`Budget`; not its latency).
        settings: overrides of :data:`DEFAULT_SETTINGS`.
        max_samples: stop after this many samples (for tests).
        space_placements: where the random kernels must be legal (default ``placements``;
            a task timed at other placements than it searches at gives both).

    Returns:
        The fitted model (also written to ``out``).
    """
    placements = check_placements(placements)
    budget = dataclasses.replace(budget or Budget(), latency=None)  # the model a latency budget needs is what this makes
    st = {**DEFAULT_SETTINGS, **(settings or {})}
    fp = fingerprint(device, threads, batch)
    out = Path(out) if out is not None else default_profile_path(fp)
    spath = samples_path(out)
    legal_at = check_placements(space_placements) if space_placements is not None else placements
    header = _header(fp, placements, seed, st, budget)
    header["space_placements"] = [str(p) for p in legal_at]
    old_header, done = read_samples(spath, header)
    if old_header != json.loads(json.dumps(header)):
        done = []  # no samples yet, or samples of another setup: start the file again
    if old_header is None or not done or spath.read_text().count("\n") != 1 + len(done) or not spath.read_text().endswith("\n"):
        _rewrite(spath, header, done)  # a fresh file, or one whose last write was cut short
    have = {s["index"] for s in done}
    spent = sum(s.get("seconds", 0.0) for s in done)
    from kasrl.eval.latency import allocator_pinned
    from kasrl.space import SearchSpace

    space = SearchSpace(legal_at, budget)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(time_budget_s), initial=min(round(spent), round(time_budget_s)), unit="s", desc="calibrating latency",
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        bar.set_postfix(samples=len(done))
    index = 0
    try:
        while spent < time_budget_s and (max_samples is None or len(done) < max_samples):
            if index in have:
                index += 1
                continue
            start = time.perf_counter()
            p = placements[index % len(placements)]
            try:
                g = random_kernel(space, seed, index)
                rec = measure_sample(g, p, batch, threads, device, st, whole=index % st["whole_every"] == 0, seed=seed * 100003 + index)
            except Exception as e:  # noqa: BLE001 - a kernel that fails to run is recorded, not fitted
                rec = {"error": f"{type(e).__name__}: {e}"[:300]}
            rec.update(index=index, placement=str(p), seconds=time.perf_counter() - start)
            _append(spath, rec)
            done.append(rec)
            have.add(index)
            spent += rec["seconds"]
            if bar is not None:
                bar.n = min(round(spent), bar.total)
                bar.set_postfix(samples=len(done), refresh=False)
                bar.refresh()
            index += 1
    finally:
        if bar is not None:
            bar.close()
    try:
        model, residuals = fit_model(done, batch, "float32", fp, placements)
    except ValueError:
        errors = sorted({s["error"] for s in done if s.get("error")})
        why = f" (every kernel failed, e.g. {errors[0]})" if errors else ""
        raise KasrlError(f"latency calibration: no usable sample in {spent:.1f} s{why}; give it more time") from None
    ok = [s for s in done if not s.get("error")]
    calibration = {
        "placements": [str(p) for p in placements],
        "seed": seed,
        "seconds": round(spent, 3),
        "samples": {
            "kernels": len(ok),
            "failed": len(done) - len(ok),
            "nodes": sum(len(s["nodes"]) for s in ok),
            "whole_kernels": sum(1 for s in ok if s.get("whole")),
            "per_placement": {str(p): sum(1 for s in ok if s["placement"] == str(p)) for p in placements},
            "file": spath.name,
        },
        "residuals": _finite(residuals),
        "allocator_pinned": allocator_pinned(),
        "settings": st,
    }
    save_profile(model, calibration, out)
    return model


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
