"""The measured evaluator: real latency and proxy-trained accuracy, cached in the store.

>>> ev = MeasuredEvaluator("fashion_mnist_cnn", store=SQLiteStore("runs/results.db"))  # doctest: +SKIP
>>> result = ev.evaluate(kernel)  # doctest: +SKIP
>>> result.metrics["speedup"], result.metrics["accuracy"], result.reward  # doctest: +SKIP

(``evaluate`` returns an :class:`EvalResult`; a repeated kernel costs nothing.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from kasrl.eval.base import EvalResult, Evaluator, failure
from kasrl.eval.isolation import stage_limits
from kasrl.eval.outcome import StageOutcome
from kasrl.eval.stages import Evaluable, GraphKernel
from kasrl.ir.graph import KernelGraph
from kasrl.store.base import ResultStore
from kasrl.store.records import EvalRecord, Status
from kasrl.tasks import Task, load_task

__all__ = ["MeasuredEvaluator", "reward_from", "objectives_from"]

BASELINE = "baseline"


def reward_from(metrics: dict, baseline_accuracy: float, spec) -> float:
    """The default reward: speedup while accuracy stays near the baseline's.

    ``speed = log(speedup)`` (end to end; ``linear``: ``speedup - 1``). Within
    ``spec.tolerance`` accuracy points of the baseline the reward is ``speed``;
    beyond it the speed reward is withdrawn (only a slowdown still counts) and
    each further point costs ``spec.slope``. A negative reward is squashed
    softly above ``spec.floor`` (``floor * tanh(r / floor)``: about ``r`` near 0,
    the order of any two kernels kept), so every kernel that ran scores above
    every failure penalty and bad kernels still differ by how bad they are.
    """
    speedup = max(float(metrics.get("speedup", 1.0)), 1e-6)
    speed = math.log(speedup) if spec.speed == "log" else speedup - 1.0
    gap = baseline_accuracy - float(metrics.get("accuracy", 0.0))
    raw = speed if gap <= spec.tolerance else min(speed, 0.0) - spec.slope * (gap - spec.tolerance)
    if raw >= 0:
        return raw
    return spec.floor * math.tanh(raw / spec.floor)  # ~raw near 0, above floor always, order kept


def objectives_from(metrics: dict) -> tuple:
    """The two-objective form ``(speedup, accuracy)`` for NSGA-II."""
    return (float(metrics.get("speedup", 0.0)), float(metrics.get("accuracy", 0.0)))


class MeasuredEvaluator(Evaluator):
    """Evaluates kernels on a task with the stages of :mod:`kasrl.eval.stages`.

    Args:
        task: a :class:`~kasrl.tasks.Task`, a task name or a YAML path.
        store: results store (where the baseline network's accuracy is cached).
        isolation: ``"process"`` (a child process per worker, crash-isolated,
            with per-stage time limits) or ``"inline"`` (this process; for
            debugging and tests). Subclasses that run the stages elsewhere name
            their own (``isolations``).
        run_id, strategy: written into every record.
        memory_limit: address-space cap of the worker process in bytes.
        skip: stages to leave out (e.g. ``("accuracy",)``).
        device: override the task's device in the worker (``"cuda:i"``: the worker pins that GPU).

    Results record where they were measured (``device``, with its ``hardware``
    key); :meth:`hardware_keys` tells the results cache which stored results
    were measured on this evaluator's hardware.
    """

    fidelity = "measured"
    #: the ``isolation`` values this class runs
    isolations: tuple = ("process", "inline")

    def __init__(self, task: Task | str, store: ResultStore | None = None, isolation: str = "process", run_id: str = "adhoc",
                 strategy: str = "adhoc", memory_limit: int | None = 8 << 30, skip: Sequence[str] = (), device: str | None = None) -> None:
        if isolation not in self.isolations:
            raise ValueError(f"`isolation` must be {' or '.join(map(repr, self.isolations))}, got {isolation!r}")
        self.task = load_task(task) if isinstance(task, str) else task
        self.task_fingerprint = self.task.fingerprint + (f":skip={','.join(sorted(skip))}" if skip else "")
        self.store = store
        self.isolation = isolation
        self.run_id = run_id
        self.strategy = strategy
        self.skip = tuple(skip)
        self.penalties = {k: getattr(self.task.reward.penalties, k) for k in
                          ("build_error", "numerics_error", "budget_violation", "timeout", "oom", "crash")}
        self._baseline: dict | None = None
        self._runtime = None
        self._worker = None
        self.memory_limit = memory_limit
        self.device = device

    # -- machinery --------------------------------------------------------------------
    @property
    def runtime(self):
        """The task loaded in this process (inline mode, and for placements), on ``device`` when one is given."""
        if self._runtime is None:
            from kasrl.eval.runtime import TaskRuntime

            self._runtime = TaskRuntime(self.task, device=self.device)
        return self._runtime

    def device_info(self) -> dict:
        """The fingerprint of the device this evaluator's stages run on (starting its worker if it has none yet)."""
        if self.isolation == "inline":
            return dict(self.runtime.hardware)
        return dict(self._ensure_worker().start())

    def hardware_keys(self) -> tuple:
        """The ``hardware`` keys whose results this evaluator may reuse: its worker's (empty when it cannot say)."""
        key = self.device_info().get("hardware")
        return (key,) if key else ()

    def _known_device(self) -> dict:
        """The device fingerprint, if known already (never starts anything)."""
        if self._runtime is not None:
            return dict(self._runtime.hardware)
        return dict(getattr(self._worker, "device_info", None) or {})

    def _ensure_worker(self):
        if self._worker is None:
            from kasrl.eval.worker import IsolatedWorker

            self._worker = IsolatedWorker(self.task.to_dict(), stage_limits(self.task.timeouts), self.memory_limit, device=self.device)
        return self._worker

    def _run(self, kind: str, payload) -> StageOutcome:
        """Run one job (``"baseline"``, or ``"eval"`` on ``payload``'s kernel) where this evaluator runs its stages."""
        if self.isolation == "inline":
            from kasrl.eval.stages import run_baseline, run_stages

            if kind == "baseline":
                return run_baseline(self.runtime, (payload or {}).get("options"))
            kernel = payload["kernel"] if "kernel" in payload else GraphKernel(payload["doc"])
            return run_stages(self.runtime, kernel, skip=tuple(payload.get("skip", self.skip)), options=payload.get("options"))
        worker = self._ensure_worker()
        if kind == "eval":
            payload = {k: v for k, v in payload.items() if k != "kernel"}
            payload.setdefault("skip", list(self.skip))
        return worker.request(kind, payload)

    def measure(self, kernel: KernelGraph | Evaluable, skip: Sequence[str] = (), options: dict | None = None) -> StageOutcome:
        """Run the stages on one kernel at a chosen fidelity (no reward: a ladder rung's raw outcome).

        Args:
            kernel: what to measure.
            skip: stages not to run.
            options: see :func:`kasrl.eval.stages.run_stages` (latency overrides, ``train_fraction``, ``seed``).
        """
        ev = kernel if isinstance(kernel, Evaluable) else GraphKernel(kernel)
        payload = {"kernel": ev, "doc": ev.doc} if not getattr(ev, "planted", None) else {"kernel": ev, "planted": ev.planted}
        payload.update(skip=list(skip), options=dict(options or {}))
        return self._run("eval", payload)

    def measure_many(self, kernels: Sequence, skip: Sequence[str] = (), options: dict | None = None) -> list:
        """:meth:`measure` for several kernels, one after the other (pools and Ray run them at once)."""
        return [self.measure(k, skip, options) for k in kernels]

    def close(self) -> None:
        """Stop the worker process."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> MeasuredEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- baseline -----------------------------------------------------------------------
    def baseline(self, fraction: float = 1.0, seed: int | None = None) -> dict:
        """Accuracy of the unmodified network on this task (trained once per hardware, then cached in the store).

        The cached one is reused only from the same hardware (``hardware_keys``):
        kernels are compared with a baseline trained as they are. ``fraction`` and
        ``seed`` train it as a ladder's short rung or a confirmation does (each its
        own cached row).
        """
        variant = "" if (fraction == 1.0 and seed is None) else f":fraction={fraction:g}:seed={seed}"
        if not variant and self._baseline is not None:
            return self._baseline
        if self.store is not None:
            hit = self.store.lookup(self.task.fingerprint, BASELINE + variant, fidelity=self.fidelity, hardware=self.hardware_keys())
            if hit is not None and hit.status.is_ok():
                if not variant:
                    self._baseline = dict(hit.metrics)
                return dict(hit.metrics)
        start = time.time()
        options = {"train_fraction": fraction, "seed": seed} if variant else None
        out = self._run("baseline", {"options": options} if options else None)
        if not out.status.is_ok() or "accuracy" not in out.metrics:
            raise RuntimeError(f"training the baseline network failed: {out.cause or out.to_dict()}")
        if not variant:
            self._baseline = dict(out.metrics)
        if self.store is not None:
            doc = '{"baseline": "the unmodified network"}'
            self.store.append(EvalRecord(self.task.fingerprint, BASELINE + variant, doc, Status.OK, 0.0,
                                         dict(out.metrics),
                                         {"accuracy": {"outcome": "ok", "seconds": time.time() - start}},
                                         dict(out.device or self._known_device()), self.run_id, BASELINE, self.fidelity))
        return dict(out.metrics)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, kernel: KernelGraph | Evaluable) -> EvalResult:
        """Evaluate one kernel (wrap in :class:`~kasrl.eval.cache.CachedEvaluator` to use the store)."""
        ev = kernel if isinstance(kernel, Evaluable) else GraphKernel(kernel)
        baseline_acc = self.baseline()["accuracy"] if "accuracy" not in self.skip else 0.0
        payload = {"kernel": ev, "doc": ev.doc} if not getattr(ev, "planted", None) else {"kernel": ev, "planted": ev.planted}
        return self._result(self._run("eval", payload), ev.hash, baseline_acc)

    def _result(self, raw: StageOutcome, kernel_hash: str, baseline_acc: float) -> EvalResult:
        """The result strategies see: ``raw`` with its reward (a penalty on failure)."""
        status = raw.status
        metrics = {k: v for k, v in raw.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "pruned" in raw.metrics:
            metrics["pruned"] = 1.0
        stages = raw.stages
        device = raw.device or self._known_device()
        if not status.is_ok():
            return failure(status, raw.cause, self.penalties, metrics=metrics, stages=stages,
                           kernel_hash=kernel_hash, fidelity=self.fidelity, device=device)
        if "accuracy" in metrics:
            metrics["baseline_accuracy"] = baseline_acc
            metrics["accuracy_gap"] = baseline_acc - metrics["accuracy"]
            reward = reward_from(metrics, baseline_acc, self.task.reward)
        else:
            reward = math.log(max(metrics.get("speedup", 1.0), 1e-6))
        return EvalResult(Status.OK, float(reward), metrics, objectives_from(metrics), stages, "", kernel_hash,
                          False, self.fidelity, device)
