"""Where evaluations run: in this process, on a pool of isolated local workers, or on Ray.

Every backend is an :class:`~kasrl.eval.base.Evaluator`, so strategies never know
which one they use; ``evaluate_many`` runs a batch concurrently. Kernels travel
as their JSON documents, never as pickled modules.

* ``inline``  the evaluator itself, in this process (tests, debugging);
* ``process`` :class:`PoolEvaluator` over N :class:`~kasrl.eval.measured.MeasuredEvaluator`
  workers, each a crash-isolated child process (spawn, per-stage time limits,
  a fresh child after a crash, one per GPU with its device pinned);
* ``ray``     :class:`kasrl.eval.ray_executor.RayEvaluator` (optional extra).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kasrl.eval.base import EvalResult, Evaluator
from kasrl.ir.graph import KernelGraph

__all__ = ["PoolEvaluator"]


class PoolEvaluator(Evaluator):
    """Runs evaluations on several workers at once.

    Args:
        make_worker: ``index -> Evaluator`` (each worker keeps its own state,
            e.g. a child process with the task loaded).
        workers: how many.
    """

    def __init__(self, make_worker: Callable[[int], Evaluator], workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"`workers` must be at least 1, got {workers}")
        self.workers = [make_worker(i) for i in range(workers)]
        self.fidelity = self.workers[0].fidelity
        self.task_fingerprint = self.workers[0].task_fingerprint
        self._idle: queue.Queue = queue.Queue()
        for w in self.workers:
            self._idle.put(w)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kasrl-eval")
        self._hardware: tuple | None = None
        self._hardware_known = False

    def hardware_keys(self) -> tuple | None:
        """Every worker's ``hardware`` keys together (None when no worker's results depend on hardware).

        Any worker may get a kernel, so a result measured on any worker's hardware
        is reused. Asked once (workers start, in parallel, to say where they run);
        local workers do not change hardware.
        """
        if not self._hardware_known:
            answers = list(self._pool.map(lambda w: w.hardware_keys(), self.workers))
            known = [a for a in answers if a is not None]
            self._hardware = None if not known else tuple(sorted({k for a in known for k in a}))
            self._hardware_known = True
        return self._hardware

    def _one(self, kernel: KernelGraph) -> EvalResult:
        worker = self._idle.get()
        try:
            return worker.evaluate(kernel)
        finally:
            self._idle.put(worker)

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """Evaluate one kernel on a free worker."""
        return self._one(kernel)

    def evaluate_many(self, kernels: Sequence[KernelGraph]) -> list:
        """Evaluate a batch concurrently (results in input order)."""
        return list(self._pool.map(self._one, kernels))

    def measure_many(self, kernels: Sequence, skip: Sequence[str] = (), options: dict | None = None) -> list:
        """Raw stage outcomes of a batch at a chosen fidelity, concurrently (a ladder rung; see ``MeasuredEvaluator.measure``)."""

        def one(kernel):
            worker = self._idle.get()
            try:
                return worker.measure(kernel, skip, options)
            finally:
                self._idle.put(worker)

        return list(self._pool.map(one, kernels))

    def baseline(self, fraction: float = 1.0, seed: int | None = None) -> dict:
        """The baseline's metrics (its first worker's; see ``MeasuredEvaluator.baseline``)."""
        return self.workers[0].baseline(fraction, seed)

    def close(self) -> None:
        """Stop every worker."""
        self._pool.shutdown(wait=True)
        for w in self.workers:
            if hasattr(w, "close"):
                w.close()
