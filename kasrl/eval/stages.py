"""The stages of a measured evaluation (docs/architecture.md, section 6), stopping at the first failure.

1. ``build``    build the kernel at every placement; forward and backward on
                random input; the shape is kept and every value is finite;
2. ``budget``   FLOPs (FlopCounterMode: a multiply-add is 2) and parameters
                within the task's budget at every placement;
3. ``latency``  the kernel against the 3x3 convolution at each timed placement,
                and the whole network against the baseline network, in the
                same process, interleaved, under the timing lock of the device
                (machine-wide on the CPU, one per GPU), both sides run as the
                task's ``latency`` options say (dtype, channels-last, compiled
                -- reported as the stage ``compile`` first --, CUDA graphs);
4. ``accuracy`` train the network with the kernel in every placeholder on the
                task's recipe and test it; stop early on NaN or a loss milestone.

:func:`run_stages` returns a :class:`~kasrl.eval.outcome.StageOutcome` (it
crosses process boundaries as ``to_dict()``). The reward is computed by the
caller, which knows the baseline's accuracy. Every outcome the stages make says
where they ran (``device``: the worker's :attr:`~kasrl.eval.runtime.TaskRuntime.hardware`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from kasrl.eval.latency import CompileError, PreparedPair, TimingOptions, conv3x3, prepare_pair, time_prepared
from kasrl.eval.locks import ComputeSlots, timing_lock
from kasrl.eval.outcome import StageOutcome
from kasrl.eval.runtime import NumericsError, StageTimeout, TaskRuntime, train_and_test
from kasrl.solver.budget import Placement, conv3x3_flops, conv3x3_params
from kasrl.store.records import Status
from kasrl.tasks import LatencySpec

__all__ = ["Evaluable", "GraphKernel", "run_stages", "run_baseline", "run_job", "timing_lock", "classify", "STAGES", "TIMING_QUEUE",
           "COMPILE"]

STAGES = ("build", "budget", "latency", "accuracy")

#: Reported while the latency stage waits for its device's timing lock.
TIMING_QUEUE = "timing_queue"
#: Reported while the latency stage compiles both sides (``latency.compile``); its limit is ``timeouts.compile_s``.
COMPILE = "compile"


class Evaluable:
    """What the stages need from a kernel: ``build(placement) -> nn.Module``, a hash and its document."""

    hash: str = ""
    doc: str = ""

    def build(self, p: Placement) -> nn.Module:  # pragma: no cover - interface
        """The kernel as a module at placement ``p``."""
        raise NotImplementedError


class GraphKernel(Evaluable):
    """A solved :class:`~kasrl.ir.graph.KernelGraph` (or its JSON text) as an evaluable."""

    def __init__(self, graph_or_doc) -> None:
        from kasrl.ir.canonical import kernel_hash
        from kasrl.ir.serialize import dumps, loads

        if isinstance(graph_or_doc, str):
            self.graph = loads(graph_or_doc, "kernel")
            self.doc = graph_or_doc
        else:
            self.graph = graph_or_doc
            self.doc = dumps(graph_or_doc)
        self.hash = kernel_hash(self.graph)

    def build(self, p: Placement) -> nn.Module:
        """The kernel as a module at placement ``p`` (generated code)."""
        from kasrl.codegen.module import build_module

        return build_module(self.graph, p.c, p.h, p.w)


def kernel_from_payload(payload: dict) -> Evaluable:
    """The evaluable a worker was sent: a kernel's JSON document (``"doc"``), or a
    planted test kernel named ``"package.module:Class"`` (``"planted"``).

    Raises:
        Exception: whatever loading raises (a worker records it as ``build_error``).
    """
    if "planted" in payload:
        import importlib

        module, _, name = payload["planted"].partition(":")
        return getattr(importlib.import_module(module), name)()
    return GraphKernel(payload["doc"])


def classify(stage: str, exc: BaseException) -> tuple[Status, str]:
    """``(status, cause)`` for an exception raised in ``stage``."""
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0][:300]
    if isinstance(exc, StageTimeout):
        return Status.TIMEOUT, f"{stage}: {first}"
    if isinstance(exc, NumericsError):
        return Status.NUMERICS_ERROR, f"{stage}: {first}"
    low = text.lower()
    if isinstance(exc, MemoryError) or "out of memory" in low or "can't allocate" in low or "cannot allocate" in low or (
            "alloc" in low and "memory" in low):
        return Status.OOM, f"{stage}: {first}"
    if stage == "build" or (isinstance(exc, CompileError) and exc.side == "kernel"):  # a kernel torch.compile cannot compile
        return Status.BUILD_ERROR, f"{stage}: {first}"
    return Status.CRASH, f"{stage}: {first}"


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def _stage_build(rt: TaskRuntime, kernel: Evaluable, metrics: dict) -> None:
    deadline = time.perf_counter() + rt.task.timeouts.build_s
    with ComputeSlots(device=rt.device) as slots:
        for p in rt.placements:
            with slots.step():  # never while a neighbour times
                _build_at(rt, kernel, p)
            if time.perf_counter() - slots.waited > deadline:  # waiting for a neighbour's timing does not count
                raise StageTimeout(f"building and running took longer than {rt.task.timeouts.build_s:.0f} s")
    metrics["placements"] = [str(p) for p in rt.placements]


def _build_at(rt: TaskRuntime, kernel: Evaluable, p: Placement) -> None:
    m = kernel.build(p).to(rt.device)
    x = torch.randn(2, p.c, p.h, p.w, device=rt.device, requires_grad=True)
    y = m(x)
    if tuple(y.shape) != tuple(x.shape):
        raise NumericsError(f"output shape {list(y.shape)} is not the input shape {list(x.shape)} at {p}")
    if not _finite(y):
        raise NumericsError(f"the output is not finite at {p}")
    y.float().square().mean().backward()
    if not _finite(x.grad) or not all(_finite(q.grad) for q in m.parameters()):
        raise NumericsError(f"a gradient is not finite at {p}")


def _stage_budget(rt: TaskRuntime, kernel: Evaluable, metrics: dict) -> str:
    from kasrl.analysis import measured_cost

    worst_f = worst_p = 0.0
    # The latency budget bounds predicted latency (the masks' job); measured speed is the latency stage's.
    budget = dataclasses.replace(rt.budget, latency=None)
    for p in rt.placements:
        lim = budget.limits(p)
        with ComputeSlots() as slots, slots.step():
            flops, params = measured_cost(kernel.build(p), p)
        worst_f = max(worst_f, flops / conv3x3_flops(p))
        worst_p = max(worst_p, params / conv3x3_params(p))
        if flops > lim.flops or params > lim.params:
            metrics.update(flops_ratio=worst_f, params_ratio=worst_p)
            return f"budget: {flops} FLOPs / {params} params at {p} exceed {lim.flops} / {lim.params}"
    metrics.update(flops_ratio=worst_f, params_ratio=worst_p)
    return ""


def _timing_cap(spec: LatencySpec, deadline: float, timings_left: int) -> float:
    """The longest the next timing may be extended to.

    Its share of the stage's time left (with a margin), never below ``time_s``
    nor above ``max_time_s``: a noisy host then costs precision, not a timeout
    penalty.
    """
    share = 0.8 * (deadline - time.perf_counter()) / max(timings_left, 1)
    return max(spec.time_s, min(spec.longest_s, share))


def _prepared_pairs(rt: TaskRuntime, kernel: Evaluable, report: Callable[[str], None] | None, spec: LatencySpec) -> list:
    """``[(name, PreparedPair)]``: the kernel against the conv at each timed placement, then the networks.

    Each pair is readied (and compiled, captured) as one compute step on the
    device, before the timing lock is taken: compiling never runs while a
    neighbour times there, nor holds the lock while it does.
    """
    options = TimingOptions.from_spec(spec)
    if options.compile and report is not None:
        report(COMPILE)  # compiling has its own limit (timeouts.compile_s) and is not timed
    pairs = []
    with ComputeSlots(device=rt.device) as slots:
        for p in rt.timed_placements:
            with slots.step():
                x = torch.randn(spec.batch, p.c, p.h, p.w, device=rt.device)
                pairs.append((str(p), prepare_pair(kernel.build(p), conv3x3(p.c), x, options, spec.warmup)))
        with slots.step():
            pairs.append(("network", prepare_pair(rt.network(kernel.build), rt.network(None), rt.latency_input(), options, spec.warmup)))
    return pairs


def _time(pair: PreparedPair, spec: LatencySpec, max_time_s: float):
    """One timing of a prepared pair with the task's settings."""
    return time_prepared(pair, spec.repeats, spec.warmup, spec.time_s, spec.threads, quantile=spec.quantile, max_time_s=max_time_s,
                         target_spread=spec.target_spread)


def _latency_spec(rt: TaskRuntime, options: dict) -> LatencySpec:
    """The task's latency settings with a rung's overrides (``options["latency"]``: time_s, max_time_s, ...)."""
    over = options.get("latency") or {}
    return dataclasses.replace(rt.task.latency, **over) if over else rt.task.latency


def _stage_latency(rt: TaskRuntime, kernel: Evaluable, metrics: dict, report: Callable[[str], None] | None = None,
                   options: dict | None = None) -> None:
    spec = _latency_spec(rt, options or {})
    pairs = _prepared_pairs(rt, kernel, report, spec)
    if spec.compile:
        metrics["compile_s"] = sum(pair.compile_s[0] for _, pair in pairs)  # the kernel's, every placement and the network
        metrics["baseline_compile_s"] = sum(pair.compile_s[1] for _, pair in pairs)
    logs = []
    if report is not None:
        report(TIMING_QUEUE)  # waiting for neighbours' timing is not this kernel's latency stage
    with timing_lock(device=rt.device):
        if report is not None:
            report("latency")  # its time limit starts now
        deadline = time.perf_counter() + rt.task.timeouts.latency_s  # from when the device is ours
        for i, (name, pair) in enumerate(pairs[:-1]):
            t = _time(pair, spec, _timing_cap(spec, deadline, len(pairs) - i))  # this placement, the ones after, the network
            metrics[f"kernel_speedup/{name}"] = t.speedup
            metrics[f"kernel_spread/{name}"] = t.speedup_spread
            logs.append(math.log(t.speedup))
            if time.perf_counter() > deadline:
                raise StageTimeout(f"timing took longer than {rt.task.timeouts.latency_s:.0f} s")
        t = _time(pairs[-1][1], spec, _timing_cap(spec, deadline, 1))
    metrics["kernel_speedup"] = math.exp(sum(logs) / len(logs)) if logs else 1.0
    metrics["speedup"] = t.speedup
    metrics["speedup_spread"] = t.speedup_spread
    metrics["latency_ms"] = t.kernel_ms  # quiet-period time: the task's latency.quantile of per-call times
    metrics["baseline_latency_ms"] = t.baseline_ms
    metrics["latency_median_ms"] = t.kernel_median_ms
    metrics["baseline_latency_median_ms"] = t.baseline_median_ms


def _stage_accuracy(rt: TaskRuntime, kernel: Evaluable, metrics: dict, options: dict | None = None) -> None:
    options = options or {}
    seed = options.get("seed")
    net = rt.network(kernel.build, seed=seed)
    out = train_and_test(rt, net, rt.task.timeouts.train_s, fraction=float(options.get("train_fraction", 1.0)), seed=seed)
    metrics.update(accuracy=out.accuracy, train_loss=out.final_loss, train_seconds=out.seconds, train_steps=out.steps)
    if out.pruned:
        metrics["pruned"] = out.pruned


def run_stages(rt: TaskRuntime, kernel: Evaluable, report: Callable[[str], None] | None = None, skip: tuple = (),
               options: dict | None = None) -> StageOutcome:
    """Run the stages in order, stopping at the first failure (never raises for a bad kernel).

    Args:
        rt: the loaded task.
        kernel: what to evaluate.
        report: called with a stage's name when it starts (the worker uses it
            so its parent can enforce per-stage time limits).
        skip: stages not to run (e.g. ``("accuracy",)`` for a latency-only pass).
        options: a lower or different fidelity (the ladder's rungs; plain data):
            ``latency`` overrides of the task's latency settings (``time_s``,
            ``max_time_s``, ``target_spread``...), ``train_fraction`` of the
            recipe's steps, and the training ``seed``.
    """
    metrics: dict = {}
    stages: dict = {}
    for name in STAGES:
        if name in skip:
            continue
        if report is not None:
            report(name)
        start = time.perf_counter()
        try:
            if name == "build":
                _stage_build(rt, kernel, metrics)
            elif name == "budget":
                problem = _stage_budget(rt, kernel, metrics)
                if problem:
                    return StageOutcome.failure(Status.BUDGET_VIOLATION, problem, stage=name, seconds=time.perf_counter() - start,
                                                metrics=metrics, stages=stages, device=rt.hardware)
            elif name == "latency":
                _stage_latency(rt, kernel, metrics, report, options)
            else:
                _stage_accuracy(rt, kernel, metrics, options)
        except Exception as e:  # noqa: BLE001 - every failure becomes a typed outcome
            status, cause = classify(name, e)
            return StageOutcome.failure(status, cause, stage=name, seconds=time.perf_counter() - start, metrics=metrics, stages=stages,
                                        device=rt.hardware)
        stages[name] = {"outcome": "ok", "seconds": time.perf_counter() - start}
    return StageOutcome(Status.OK, "", metrics, stages, dict(rt.hardware))


def run_baseline(rt: TaskRuntime, options: dict | None = None) -> StageOutcome:
    """Accuracy of the unmodified network on the task's recipe (computed once per task;
    ``options``: ``train_fraction`` and ``seed``, as for :func:`run_stages`).

    Its metrics are ``accuracy``, ``train_seconds`` and ``train_loss``; a failure
    to train is an outcome with the cause, not an exception.
    """
    options = options or {}
    seed = options.get("seed")
    start = time.perf_counter()
    try:
        out = train_and_test(rt, rt.network(None, seed=seed), rt.task.timeouts.train_s, fraction=float(options.get("train_fraction", 1.0)),
                             seed=seed)
    except Exception as e:  # noqa: BLE001 - the evaluator raises with this cause
        status, cause = classify("baseline", e)
        return StageOutcome.failure(status, cause, device=rt.hardware)
    metrics = {"accuracy": out.accuracy, "train_seconds": out.seconds, "train_loss": out.final_loss}
    return StageOutcome(Status.OK, "", metrics, {"baseline": {"outcome": "ok", "seconds": time.perf_counter() - start}}, dict(rt.hardware))


def run_job(rt: TaskRuntime, kind: str, payload: dict | None, report: Callable[[str], None] | None = None,
            skip: tuple = ()) -> StageOutcome:
    """One job of an isolated worker (a child process or a Ray actor).

    Args:
        rt: the task, loaded in the worker.
        kind: ``"baseline"`` (train the unmodified network) or ``"eval"`` (run the
            stages on the kernel ``payload`` names; see :func:`kernel_from_payload`).
        payload: the kernel, for ``"eval"``.
        report: called with a stage's name when it starts.
        skip: stages not to run.
    """
    options = (payload or {}).get("options") or {}
    if kind == "baseline":
        if report is not None:
            report("baseline")
        return run_baseline(rt, options)
    try:
        kernel = kernel_from_payload(payload)
    except Exception as e:  # noqa: BLE001 - a kernel that cannot be loaded is the kernel's failure
        return StageOutcome.failure(Status.BUILD_ERROR, f"load: {type(e).__name__}: {e}", device=getattr(rt, "hardware", None))
    return run_stages(rt, kernel, report=report, skip=tuple(payload.get("skip", skip)), options=options)
