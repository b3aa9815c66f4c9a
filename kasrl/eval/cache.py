"""The results store in front of any evaluator: a repeated kernel costs nothing.

Every evaluation is appended to the store (append-only; a killed search loses at
most the evaluation in flight), and a kernel this task has already seen, at the
same fidelity and on the same hardware, is answered from the store.

"The same hardware": every measured result records the device fingerprint of the
worker that measured it (``device``, :func:`kasrl.eval.latency.device_fingerprint`),
whose ``hardware`` key covers the CPU model or GPU name, driver and CUDA versions,
torch version, dtype and threads. A speedup timed on one machine says little about
another, so with ``device: auto`` a store shared by several machines gives each
its own results. The analytic fidelity does not depend on hardware and is reused
anywhere. Rows written before results carried the key never match a measured lookup.
"""

from __future__ import annotations

from typing import Any

from kasrl.eval.base import EvalResult, Evaluator
from kasrl.eval.measured import objectives_from
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.graph import KernelGraph
from kasrl.ir.serialize import dumps
from kasrl.store.base import ResultStore
from kasrl.store.records import EvalRecord

__all__ = ["CachedEvaluator"]

_INNER = object()  # lookup(): ask the inner evaluator for its hardware keys


class CachedEvaluator(Evaluator):
    """Looks kernels up in ``store`` by (task fingerprint, kernel hash, fidelity, hardware) before evaluating.

    Args:
        inner: the evaluator that does the work.
        store: the results store.
        run_id, strategy: written into every record.
    """

    def __init__(self, inner: Evaluator, store: ResultStore, run_id: str = "adhoc", strategy: str = "adhoc") -> None:
        self.inner = inner
        self.store = store
        self.run_id = run_id
        self.strategy = strategy
        self.fidelity = inner.fidelity
        self.task_fingerprint = inner.task_fingerprint
        self.hits = 0

    def hardware_keys(self) -> tuple | None:
        """The inner evaluator's (see :meth:`Evaluator.hardware_keys`)."""
        return self.inner.hardware_keys() if hasattr(self.inner, "hardware_keys") else None

    def lookup(self, kernel: KernelGraph, hardware: Any = _INNER) -> EvalResult | None:
        """The stored result for ``kernel`` on this task and the inner evaluator's hardware, if any.

        Args:
            kernel: the kernel.
            hardware: the hardware keys to accept (default: :meth:`hardware_keys`; None: any).
        """
        if hardware is _INNER:
            hardware = self.hardware_keys()
        rec = self.store.lookup(self.task_fingerprint, kernel_hash(kernel), fidelity=self.fidelity, hardware=hardware)
        return None if rec is None else self.from_record(rec)

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """The stored result of ``kernel`` if there is one, else the inner evaluator's (then stored)."""
        hit = self.lookup(kernel)
        if hit is not None:
            self.hits += 1
            return hit
        result = self.inner.evaluate(kernel)
        self.record(kernel, result)
        return result

    def evaluate_many(self, kernels) -> list:
        """Answer cached kernels from the store and evaluate the rest together."""
        hardware = self.hardware_keys()
        out: list = [self.lookup(k, hardware) for k in kernels]
        self.hits += sum(r is not None for r in out)
        todo = [i for i, r in enumerate(out) if r is None]
        if todo:
            fresh = self.inner.evaluate_many([kernels[i] for i in todo])
            for i, r in zip(todo, fresh, strict=False):
                self.record(kernels[i], r)
                out[i] = r
        return out

    def record(self, kernel: KernelGraph, result: EvalResult) -> None:
        """Append ``result`` for ``kernel`` to the store."""
        stages = {k: dict(v) for k, v in result.stages.items()}
        if result.cause:
            failing = next((k for k, v in stages.items() if v.get("outcome") != "ok"), None)
            if failing is None:
                failing = "evaluate"
                stages[failing] = {"outcome": result.status.label, "seconds": 0.0}
            stages[failing]["cause"] = result.cause
        self.store.append(EvalRecord(self.task_fingerprint, result.kernel_hash or kernel_hash(kernel), dumps(kernel), result.status,
                                     result.reward, dict(result.metrics), stages, dict(result.device), self.run_id, self.strategy,
                                     self.fidelity))

    def from_record(self, rec: EvalRecord) -> EvalResult:
        """An :class:`EvalResult` from a stored record (``cached=True``)."""
        metrics = {k: v for k, v in rec.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        cause = next((v.get("cause", "") for v in rec.stages.values() if v.get("outcome") != "ok"), "")
        objectives = objectives_from(metrics) if rec.status.is_ok() and self.fidelity == "measured" else (0.0, 0.0)
        if rec.status.is_ok() and self.fidelity != "measured":
            objectives = (1.0 / max(metrics.get("flops_ratio", 1.0), 1e-6), metrics.get("params_ratio", 0.0))
        return EvalResult(rec.status, float(rec.reward), metrics, objectives, dict(rec.stages), cause, rec.kernel_hash, True,
                          self.fidelity, dict(rec.device))

    def close(self) -> None:
        """Close the inner evaluator."""
        if hasattr(self.inner, "close"):
            self.inner.close()
