"""Budgeted evaluation: the one currency every strategy spends.

A :class:`BudgetedEvaluator` wraps the run's evaluator. Each kernel a strategy
asks about costs one evaluation, **cache hits included** (each strategy pays for
what it asks), and the run stops when the evaluation count or the time budget is
spent. A cache hit is also charged the seconds its stages took when they were
measured, so a strategy that re-asks for kernels some run already evaluated does
not fit more evaluations into the same time budget. An evaluator that raises is
charged too, as a ``crash``: every request costs one unit, so a broken evaluator
cannot keep a search asking forever. Callbacks (the SB3 pattern:
``on_result(record) -> bool``) log to wandb, show progress and keep the best
kernels; returning False stops the run early.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kasrl.errors import KasrlError
from kasrl.eval.base import EvalResult, Evaluator, failure
from kasrl.ir.graph import KernelGraph
from kasrl.ir.serialize import dumps
from kasrl.store.records import Status

__all__ = ["BudgetExhausted", "ResultRecord", "Callback", "BudgetedEvaluator", "TopKernels", "evaluate_rounds"]


class BudgetExhausted(KasrlError):
    """Raised when a strategy asks for an evaluation after its budget is spent."""


@dataclass(frozen=True)
class ResultRecord:
    """One evaluation as the run saw it.

    Attributes:
        index: evaluations done when it finished (1-based; the x-axis).
        seconds: run time when it finished.
        result: the evaluator's result.
        best_reward: best reward so far, this one included.
        doc: the kernel's JSON text.
    """

    index: int
    seconds: float
    result: EvalResult
    best_reward: float
    doc: str

    def summary(self) -> dict:
        """A JSON-able row for histories and curves."""
        r = self.result
        return {"evaluation": self.index, "seconds": self.seconds, "reward": r.reward, "best_reward": self.best_reward,
                "status": r.status.label, "hash": r.kernel_hash, "cached": r.cached, "objectives": list(r.objectives),
                **{f"m_{k}": v for k, v in r.metrics.items() if "/" not in k}}


class Callback:
    """Receives every evaluation; return False from :meth:`on_result` to stop the run."""

    def on_result(self, record: ResultRecord) -> bool:
        """Called after every evaluation; False stops the run."""
        return True

    def on_end(self) -> None:
        """Called once when the run ends."""


class TopKernels(Callback):
    """Keeps the best ``k`` distinct kernels (reward, result, document)."""

    def __init__(self, k: int = 5) -> None:
        self.k = k
        self.heap: list = []
        self.seen: set = set()

    def on_result(self, record: ResultRecord) -> bool:
        """Keep the kernel if it is among the best ``k`` distinct ones so far."""
        r = record.result
        if not r.status.is_ok() or r.kernel_hash in self.seen:
            return True
        self.seen.add(r.kernel_hash)
        item = (r.reward, record.index, record)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)
        return True

    def best(self) -> list:
        """Records, best first."""
        return [rec for _, _, rec in sorted(self.heap, key=lambda t: (-t[0], t[1]))]

    def state_dict(self) -> dict:
        """The leaderboard's state, for checkpoints."""
        return {"k": self.k, "records": [(rec.index, rec.seconds, rec.best_reward, rec.doc,
                                          _result_state(rec.result)) for rec in self.best()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.heap, self.seen = [], set()
        for index, seconds, best, doc, rs in state["records"]:
            self.on_result(ResultRecord(index, seconds, _result_from_state(rs), best, doc))


def _result_state(r: EvalResult) -> dict:
    return {"status": int(r.status), "reward": r.reward, "metrics": r.metrics, "objectives": list(r.objectives), "cause": r.cause,
            "kernel_hash": r.kernel_hash, "cached": r.cached, "fidelity": r.fidelity}


def _result_from_state(d: dict) -> EvalResult:
    from kasrl.store.records import Status

    return EvalResult(Status(d["status"]), d["reward"], d["metrics"], tuple(d["objectives"]), {}, d["cause"], d["kernel_hash"],
                      d["cached"], d["fidelity"])


class BudgetedEvaluator(Evaluator):
    """Counts and limits evaluations; notifies callbacks; keeps the history.

    Args:
        inner: the run's evaluator (cached, possibly parallel).
        evaluations: evaluations allowed.
        seconds: seconds allowed: wall clock plus the recorded seconds of cache hits
            (checked before each evaluation).
        callbacks: notified of every result, in order.
    """

    def __init__(self, inner: Evaluator, evaluations: int, seconds: float = math.inf, callbacks: Sequence[Callback] = ()) -> None:
        self.inner = inner
        self.fidelity = inner.fidelity
        self.task_fingerprint = inner.task_fingerprint
        self.max_evaluations = evaluations
        self.max_seconds = seconds
        self.callbacks = list(callbacks)
        self.spent = 0
        self.best_reward = -math.inf
        self.history: list = []
        self._elapsed_before = 0.0
        self._charged = 0.0  # recorded seconds of cache hits
        self._start = time.monotonic()
        self._stopped = False

    @property
    def elapsed(self) -> float:
        """Seconds spent, across resumes: wall clock plus the recorded seconds of cache hits."""
        return self._elapsed_before + self._charged + time.monotonic() - self._start

    @property
    def remaining(self) -> int:
        """Evaluations left (0 once the time is up or a callback stopped the run)."""
        if self._stopped or self.elapsed >= self.max_seconds:
            return 0
        return max(self.max_evaluations - self.spent, 0)

    @property
    def exhausted(self) -> bool:
        """True when no evaluation is left."""
        return self.remaining == 0

    def _note(self, kernel: KernelGraph, result: EvalResult) -> ResultRecord:
        if result.cached:
            self._charged += sum(float(v.get("seconds", 0.0)) for v in result.stages.values() if isinstance(v, dict))
        else:  # parts taken from the store (a ladder's rungs done before) cost their recorded seconds too
            self._charged += float(result.metrics.get("reused_seconds", 0.0))
        self.spent += 1
        self.best_reward = max(self.best_reward, result.reward)
        rec = ResultRecord(self.spent, self.elapsed, result, self.best_reward, dumps(kernel))
        self.history.append(rec.summary())
        for cb in self.callbacks:
            if cb.on_result(rec) is False:
                self._stopped = True
        return rec

    def record(self, kernel: KernelGraph, result: EvalResult) -> ResultRecord:
        """Count a result obtained outside this evaluator (one unit, in the history and callbacks)."""
        return self._note(kernel, result)

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """Evaluate one kernel, spending one unit.

        Raises:
            BudgetExhausted: when nothing is left.
        """
        if self.exhausted:
            raise BudgetExhausted(f"the budget is spent ({self.spent} evaluations, {self.elapsed:.0f} s)")
        result = self._safe(kernel)
        self._note(kernel, result)
        return result

    def _safe(self, kernel: KernelGraph) -> EvalResult:
        try:
            return self.inner.evaluate(kernel)
        except Exception as e:  # a broken evaluator is a recorded crash, not the end of the search
            return failure(Status.CRASH, f"evaluator raised {type(e).__name__}: {e}", fidelity=self.fidelity)

    def evaluate_many(self, kernels: Sequence[KernelGraph]) -> list:
        """Evaluate up to the remaining budget concurrently; the rest are not evaluated.

        Returns results for the first ``min(len(kernels), remaining)`` kernels.
        """
        take = list(kernels)[: self.remaining]
        if not take:
            raise BudgetExhausted(f"the budget is spent ({self.spent} evaluations, {self.elapsed:.0f} s)")
        try:
            results = self.inner.evaluate_many(take)
        except Exception:  # one kernel at a time, so only the failing ones become crashes
            results = [self._safe(k) for k in take]
        for k, r in zip(take, results, strict=False):
            self._note(k, r)
        return results

    def end(self) -> None:
        """Tell the callbacks the run is over."""
        for cb in self.callbacks:
            cb.on_end()

    def state_dict(self) -> dict:
        """Counters and history (for checkpoints)."""
        return {"spent": self.spent, "elapsed": self.elapsed, "best_reward": self.best_reward, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Continue counting from a checkpoint."""
        self.spent = state["spent"]
        self._elapsed_before = state["elapsed"]
        self._charged = 0.0
        self._start = time.monotonic()
        self.best_reward = state["best_reward"]
        self.history = list(state["history"])

    def close(self) -> None:
        """Close the inner evaluator."""
        if hasattr(self.inner, "close"):
            self.inner.close()


def evaluate_rounds(evaluator: BudgetedEvaluator, kernels: Sequence[KernelGraph], chunk: int = 1) -> list:
    """Evaluate ``kernels`` ``chunk`` at a time (one per worker), checking the budget between rounds.

    ``evaluate_many`` checks the clock once per call, so a whole generation sent at
    once could overshoot the time budget by a generation; rounds of ``chunk`` keep
    every worker busy and overshoot by one round at most. Returns the results of
    the kernels evaluated before the budget ran out (a prefix).

    Raises:
        BudgetExhausted: when not even the first could be evaluated.
    """
    step = max(int(chunk), 1)
    results: list = []
    for i in range(0, len(kernels), step):
        if results and evaluator.exhausted:
            break
        results += evaluator.evaluate_many(list(kernels[i : i + step]))
    return results
