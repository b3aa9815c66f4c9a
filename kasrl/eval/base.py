"""The evaluator interface every strategy shares, and the analytic fidelity.

An :class:`Evaluator` turns a finished, solved kernel into an
:class:`EvalResult`. It never raises on a bad kernel: a failure is a result
with a non-OK :class:`~kasrl.store.records.Status`, a penalty reward and the
cause in words. Budgets are counted the same way for every strategy because
they all go through this interface (see :mod:`kasrl.eval.budgeted`).

The :class:`AnalyticEvaluator` is the cheapest fidelity: no training and no
timing, a reward from FLOPs and parameter ratios against a 3x3 convolution.
It serves tests, quick runs and the "does the search learn?" benchmarks.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from kasrl.ir.canonical import kernel_hash
from kasrl.ir.graph import KernelGraph
from kasrl.solver.budget import Placement
from kasrl.store.records import Status

__all__ = ["EvalResult", "Evaluator", "AnalyticEvaluator", "DEFAULT_PENALTIES", "failure", "objective_names"]

#: Reward for a kernel that fails, by cause (tasks may override these). All lie below
#: every reward a kernel that ran can get (the measured reward's floor, -5, and the
#: analytic reward's lowest, ln(0.01) / 2 = -2.3), so a failure never outranks a kernel
#: that ran, however badly, and no search learns to prefer failing.
DEFAULT_PENALTIES = {
    "build_error": -7.0,
    "numerics_error": -6.0,
    "budget_violation": -6.0,
    "timeout": -6.0,
    "oom": -6.0,
    "crash": -7.0,
}


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation of one kernel gave.

    Attributes:
        status: OK or the first failing stage's outcome.
        reward: the scalar reward (a penalty on failure).
        metrics: named figures (``speedup``, ``accuracy``, ``flops_ratio``...).
        objectives: the two-objective form ``(speedup, accuracy)`` for NSGA-II
            (``(0, 0)`` on failure).
        stages: stage name -> ``{"outcome": ..., "seconds": ...}``.
        cause: one line saying what failed (empty when OK).
        kernel_hash: the evaluated kernel's identity.
        cached: True when the result came from the results store.
        fidelity: ``"analytic"`` or ``"measured"``.
        device: where it was measured: the worker's device fingerprint
            (:func:`kasrl.eval.latency.device_fingerprint`, with its ``hardware`` key).
    """

    status: Status
    reward: float
    metrics: dict = field(default_factory=dict)
    objectives: tuple = (0.0, 0.0)
    stages: dict = field(default_factory=dict)
    cause: str = ""
    kernel_hash: str = ""
    cached: bool = False
    fidelity: str = ""
    device: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise ValueError(f"`status` must be a Status, got {self.status!r}")
        if not isinstance(self.reward, (int, float)) or not math.isfinite(self.reward):
            raise ValueError(f"`reward` must be a finite number, got {self.reward!r}")


def objective_names(fidelity: str) -> tuple:
    """Names of the two objectives of ``EvalResult.objectives`` at a fidelity (both maximised)."""
    return ("speedup", "accuracy") if fidelity == "measured" else ("inv_flops_ratio", "params_ratio")


def failure(status: Status, cause: str, penalties: dict | None = None, **kw) -> EvalResult:
    """A failed result with the penalty for its cause."""
    pen = DEFAULT_PENALTIES if penalties is None else {**DEFAULT_PENALTIES, **penalties}
    return EvalResult(status=status, reward=float(pen[status.label]), cause=cause, **kw)


class Evaluator(ABC):
    """Turns finished kernels into results; never raises on a bad kernel.

    Subclasses implement :meth:`evaluate`. ``fidelity`` names what the reward
    is made of; ``task_fingerprint`` keys the results cache, and
    :meth:`hardware_keys` narrows it to results measured on this evaluator's hardware.
    """

    fidelity: str = ""
    task_fingerprint: str = ""

    def hardware_keys(self) -> tuple | None:
        """The ``hardware`` keys (:func:`kasrl.eval.latency.hardware_key`) of stored results this evaluator may reuse.

        None: its results do not depend on hardware (the analytic fidelity), any
        stored one will do. A measured evaluator gives its workers' keys (an empty
        tuple when it cannot say, which reuses nothing).
        """
        return None

    @abstractmethod
    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """Evaluate one finished, solved kernel."""

    def evaluate_many(self, kernels: Sequence[KernelGraph]) -> list:
        """Evaluate several kernels (in order; executors override this)."""
        return [self.evaluate(k) for k in kernels]


FLOOR = 1e-2  # the analytic reward's floor on FLOPs and parameter ratios


class AnalyticEvaluator(Evaluator):
    """Reward from FLOPs and parameter ratios alone (no training, no timing).

    ``reward = log(1 / flops_ratio) + capacity * log(params_ratio)``, with both
    ratios taken against a 3x3 convolution and averaged (geometrically) over the
    placements, and both floored at ``1e-2`` (so a kernel that does almost no
    arithmetic — no channel mixing — cannot run away with the reward). It prefers
    kernels that do little arithmetic yet keep learnable weights: a cheap
    stand-in for "fast and accurate", useful to check that a search learns.

    Args:
        placements: where the kernel is used (the ratios are averaged over them).
        capacity: weight of the parameter term.
    """

    fidelity = "analytic"

    def __init__(self, placements: Sequence[Placement], capacity: float = 0.5) -> None:
        self.placements = tuple(placements)
        self.capacity = capacity
        self.task_fingerprint = "analytic:" + ",".join(str(p) for p in self.placements) + f":{capacity}"

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """The analytic result of one kernel."""
        from kasrl.analysis import cost_reports

        start = time.perf_counter()
        try:
            h = kernel_hash(kernel)
            reports = cost_reports(kernel, self.placements)
        except Exception as e:  # a kernel that cannot even be costed
            return failure(Status.BUILD_ERROR, f"{type(e).__name__}: {e}", fidelity=self.fidelity)
        fr = math.exp(sum(math.log(max(r["flops_ratio"], FLOOR)) for r in reports) / len(reports))
        pr = math.exp(sum(math.log(max(r["params_ratio"], FLOOR)) for r in reports) / len(reports))
        reward = -math.log(fr) + self.capacity * math.log(pr)
        metrics = {"flops_ratio": fr, "params_ratio": pr, "n_primitives": kernel.n_primitives}
        seconds = time.perf_counter() - start
        return EvalResult(
            status=Status.OK,
            reward=float(reward),
            metrics=metrics,
            objectives=(1.0 / fr, pr),
            stages={"analytic": {"outcome": "ok", "seconds": seconds}},
            kernel_hash=h,
            fidelity=self.fidelity,
        )
