"""The multi-fidelity ladder: spend seconds only on kernels that can still win.

A measured evaluation costs tens of seconds, most of it on kernels that could
never beat the run's best. The reward's accuracy term is never positive, so the
log speedup a kernel is measured at (before any training) bounds its reward
from above; the ladder climbs rungs of the existing pipeline, cheapest first,
and stops a kernel as soon as that bound (with the noise of the measurement
behind it) falls below the run's threshold (successive halving, as in ASHA):

==========  ===============================================  =========================================
rung        what it measures                                 the bound it gives on the final reward
==========  ===============================================  =========================================
predict     the latency model's prediction, analytic costs   ln max(1, best predicted kernel speedup)
                                                             plus the model's error margin
screen      build + a short, low-precision latency screen    ln(network speedup) plus its spread
precise     the precise latency protocol + short training    ln(network speedup) plus its spread;
                                                             the short run's accuracy estimates the
                                                             reward (the baseline's own short-to-full
                                                             gain added), with a noise margin
full        the full training recipe                         the reward itself
==========  ===============================================  =========================================

The **threshold** is the run's k-th best final reward (``top_k``), or a floor the
task sets, whichever is higher (until k kernels have finished, only the floor
stops any). A kernel goes up a rung while ``bound + noise >= threshold``: one
within noise of the threshold is promoted, never dropped.

**What a strategy sees**: one reward per kernel, the final reward of the last
rung or, for a kernel stopped early, its bound capped just below the threshold
(it could not have beaten the run's best; how far below is unknown), typed
``screened_slow`` or ``screened_accuracy``. Failures keep their penalties.

**Stored per rung**: every rung's outcome is its own row of the results store
(fidelity ``<fidelity>:<rung>``, the ladder's settings in the task fingerprint),
so a kernel evaluated again -- by another strategy, in a later run, after a
restart -- resumes at the first rung it has not done, and a kill loses at most
the rung in flight.

Rungs are objects with a ``name`` and ``run(items) -> outcomes`` (a batch, so
several workers run at once); :class:`PredictRung` and :class:`MeasuredRung` are
the real ones, and tests drive the ladder with planted rungs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kasrl.eval.base import EvalResult, Evaluator, failure
from kasrl.eval.stages import Evaluable, GraphKernel
from kasrl.store.records import EvalRecord, Status

__all__ = ["RungOutcome", "Rung", "Ladder", "LadderPolicy", "CAP_BELOW"]

#: How far below the threshold a stopped kernel's reward is put (it could not have beaten it).
CAP_BELOW = 1e-3


@dataclass(frozen=True)
class RungOutcome:
    """What one rung found out about one kernel.

    Attributes:
        status: OK, or the failure that stops the kernel (its penalty applies).
        metrics: what the rung measured.
        stages: stage name -> ``{"outcome", "seconds"}`` of the rung's stages.
        cause: one line when it failed.
        bound: an upper bound of the kernel's final reward given what was measured (inf: none yet).
        noise: how much the bound may be understated by measurement noise (reward units).
        reward: the final reward, when this rung decides it (the last rung).
        screened: ``"accuracy"`` when the binding bound came from the accuracy estimate, else ``"slow"``.
        device: where it ran.
    """

    status: Status
    metrics: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    cause: str = ""
    bound: float = math.inf
    noise: float = 0.0
    reward: float | None = None
    screened: str = "slow"
    device: dict = field(default_factory=dict)

    def to_record_fields(self) -> dict:
        """JSON-able fields for the results store."""
        return {"bound": self.bound if math.isfinite(self.bound) else None, "noise": self.noise, "screened": self.screened}


class Rung(Protocol):
    """One rung: ``run`` a batch of ``(kernel, earlier rungs' outcomes)``; one outcome each, in order."""

    name: str

    def run(self, items: Sequence[tuple]) -> list:  # pragma: no cover - interface
        """The rung's outcome for each ``(kernel, outcomes of the rungs before)``."""
        ...


@dataclass
class LadderPolicy:
    """How the threshold is set.

    Attributes:
        top_k: the threshold is the run's k-th best final reward.
        floor: a reward every kernel must be able to beat to be trained fully
            (e.g. 0.0: at least as fast as the baseline); None: no floor.
    """

    top_k: int = 5
    floor: float | None = None

    def threshold(self, finals: Sequence[float]) -> float:
        """The threshold given the run's final rewards so far."""
        kth = sorted(finals, reverse=True)[self.top_k - 1] if len(finals) >= self.top_k else -math.inf
        return max(kth, self.floor if self.floor is not None else -math.inf)


class Ladder(Evaluator):
    """Evaluates kernels rung by rung, promoting while they can still win.

    Args:
        rungs: the rungs, cheapest first; the last gives the final reward.
        policy: the threshold's settings.
        fidelity: the fidelity name of the final results (the rungs store as
            ``<fidelity>:<rung name>``).
        task_fingerprint: the task's fingerprint with the ladder's settings (keys the store).
        store: the results store (None: nothing is cached).
        penalties: failure penalties by cause (the task's).
        run_id, strategy: written into every stored row.
    """

    def __init__(self, rungs: Sequence[Any], policy: LadderPolicy | None = None, fidelity: str = "measured",
                 task_fingerprint: str = "", store: Any = None, penalties: dict | None = None, run_id: str = "adhoc",
                 strategy: str = "adhoc") -> None:
        if not rungs:
            raise ValueError("a ladder needs at least one rung")
        self.rungs = list(rungs)
        self.policy = policy or LadderPolicy()
        self.fidelity = fidelity
        self.task_fingerprint = task_fingerprint
        self.store = store
        self.penalties = penalties
        self.run_id, self.strategy = run_id, strategy
        self.finals: list = []
        self.reached: dict = {r.name: 0 for r in self.rungs}  # kernels that ran each rung (this evaluator's life)

    # -- the threshold -----------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The reward a kernel must be able to beat to go on."""
        return self.policy.threshold(self.finals)

    def restore(self, history: Sequence[dict]) -> None:
        """Rebuild the run's final rewards from its history rows (on resume)."""
        last = float(len(self.rungs) - 1)
        self.finals = [row["reward"] for row in history if row.get("status") == "ok" and row.get("m_rung", last) == last]

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, kernel) -> EvalResult:
        """Climb the ladder with one kernel."""
        return self.evaluate_many([kernel])[0]

    def evaluate_many(self, kernels: Sequence) -> list:
        """One reward per kernel (see the module docstring); every rung a batch of the kernels still going."""
        evs = [k if isinstance(k, Evaluable) else GraphKernel(k) for k in kernels]
        done: list = [None] * len(evs)
        outcomes: list = [[] for _ in evs]
        reused = [0.0] * len(evs)
        alive = list(range(len(evs)))
        for depth, rung in enumerate(self.rungs):
            if not alive:
                break
            fresh = []
            for i in alive:  # what the store already knows at this rung
                stored = self._lookup(evs[i], rung)
                if stored is not None:
                    outcomes[i].append(stored)
                    reused[i] += sum(float(v.get("seconds", 0.0)) for v in stored.stages.values())
                else:
                    fresh.append(i)
            if fresh:
                got = rung.run([(evs[i], outcomes[i]) for i in fresh])
                for i, out in zip(fresh, got, strict=True):
                    outcomes[i].append(out)
                    self._record(evs[i], rung, out)
            still = []
            for i in alive:
                self.reached[rung.name] += 1
                out = outcomes[i][-1]
                if out.status.is_failure():
                    done[i] = self._failed(evs[i], outcomes[i])
                elif depth == len(self.rungs) - 1:
                    done[i] = self._final(evs[i], outcomes[i])
                elif out.bound + out.noise < self.threshold:
                    done[i] = self._stopped(evs[i], outcomes[i])
                else:
                    still.append(i)
            alive = still
        for i, r in enumerate(done):
            if reused[i]:  # the budget charges what the stored rungs cost when they ran
                r.metrics["reused_seconds"] = reused[i]
        return done

    # -- results -------------------------------------------------------------------------------
    def _merged(self, outs: list) -> tuple:
        metrics, stages, device = {}, {}, {}
        for rung, out in zip(self.rungs, outs, strict=False):
            metrics.update(out.metrics)
            stages.update({f"{rung.name}/{k}": dict(v) for k, v in out.stages.items()})
            device = out.device or device
        metrics["rung"] = float(len(outs) - 1)  # the index of the last rung run
        return metrics, stages, device

    def _failed(self, ev: Evaluable, outs: list) -> EvalResult:
        metrics, stages, device = self._merged(outs)
        return failure(outs[-1].status, outs[-1].cause, self.penalties, metrics=_numbers(metrics), stages=stages,
                       kernel_hash=ev.hash, fidelity=self.fidelity, device=device)

    def _final(self, ev: Evaluable, outs: list) -> EvalResult:
        metrics, stages, device = self._merged(outs)
        reward = float(outs[-1].reward)
        self.finals.append(reward)
        return EvalResult(Status.OK, reward, _numbers(metrics), _objectives(metrics), stages, "", ev.hash, False, self.fidelity, device)

    def _stopped(self, ev: Evaluable, outs: list) -> EvalResult:
        metrics, stages, device = self._merged(outs)
        out = outs[-1]
        reward = min(out.bound, self.threshold - CAP_BELOW)
        metrics.update(bound=out.bound, threshold=self.threshold)
        status = Status.SCREENED_ACCURACY if out.screened == "accuracy" else Status.SCREENED_SLOW
        cause = (f"{self.rungs[len(outs) - 1].name}: the reward cannot exceed {out.bound:.3f} (+{out.noise:.3f} noise), "
                 f"below the run's threshold {self.threshold:.3f}")
        return EvalResult(status, float(reward), _numbers(metrics), _objectives(metrics), stages, cause, ev.hash, False, self.fidelity,
                          device)

    # -- the store, per rung -------------------------------------------------------------------
    def _rung_fidelity(self, rung: Any) -> str:
        return f"{self.fidelity}:{rung.name}"

    def _lookup(self, ev: Evaluable, rung: Any) -> RungOutcome | None:
        if self.store is None or not ev.hash:
            return None
        rec = self.store.lookup(self.task_fingerprint, ev.hash, fidelity=self._rung_fidelity(rung))
        if rec is None:
            return None
        m = dict(rec.metrics)
        extra = m.pop("_rung", {}) if isinstance(m.get("_rung"), dict) else {}
        bound = extra.get("bound")
        cause = next((v.get("cause", "") for v in rec.stages.values() if v.get("outcome") != "ok"), "")
        bound = math.inf if bound is None else float(bound)
        return RungOutcome(rec.status, m, dict(rec.stages), cause, bound, float(extra.get("noise", 0.0)),
                           float(rec.reward) if extra.get("final") else None, extra.get("screened", "slow"), dict(rec.device))

    def _record(self, ev: Evaluable, rung: Any, out: RungOutcome) -> None:
        if self.store is None or not ev.hash:
            return
        stages = {k: dict(v) for k, v in out.stages.items()}
        if out.cause and not any(v.get("outcome") != "ok" for v in stages.values()):
            stages[rung.name] = {"outcome": out.status.label, "seconds": 0.0}
        for v in stages.values():
            if v.get("outcome") != "ok" and out.cause:
                v["cause"] = out.cause
        extra = {**out.to_record_fields(), "final": out.reward is not None}
        reward = out.reward if out.reward is not None else (out.bound if math.isfinite(out.bound) else 0.0)
        doc = getattr(ev, "doc", "") or json.dumps({"kernel": ev.hash})
        metrics = {**out.metrics, "_rung": extra}
        self.store.append(EvalRecord(self.task_fingerprint, ev.hash, doc, out.status, float(reward), metrics, stages,
                                     dict(out.device), self.run_id, self.strategy, self._rung_fidelity(rung), time.time()))

    def close(self) -> None:
        """Close every rung that holds workers."""
        for rung in self.rungs:
            if hasattr(rung, "close"):
                rung.close()


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _objectives(metrics: dict) -> tuple:
    return (float(metrics.get("speedup", 0.0)), float(metrics.get("accuracy", 0.0)))


# -- the real rungs ---------------------------------------------------------------------------
def _squashed(log_speedup: float, spec: Any) -> float:
    """The reward of a kernel at this log speedup and full accuracy: an upper bound of its reward (squash included)."""
    from kasrl.eval.measured import reward_from

    return reward_from({"speedup": math.exp(log_speedup), "accuracy": 0.0}, 0.0, spec)


class PredictRung:
    """Rung ``predict``: the latency model's prediction of the kernel against the conv at each timed placement.

    The network's time is its other layers' (unchanged) plus its placeholders', so
    its speedup is at most the best kernel-level speedup (or 1); ``margin`` covers
    the model's error. Costs a few milliseconds, no worker.
    """

    name = "predict"

    def __init__(self, model: Any, placements: Sequence, margin: float) -> None:
        self.model, self.placements, self.margin = model, tuple(placements), margin

    def run(self, items: Sequence[tuple]) -> list:
        out = []
        for ev, _ in items:
            start = time.perf_counter()
            graph = getattr(ev, "graph", None)
            if graph is None:  # a planted test kernel: nothing to predict
                out.append(RungOutcome(Status.OK, {}, {"predict": {"outcome": "ok", "seconds": 0.0}}))
                continue
            speedups = {str(p): self.model.predict_conv3x3(p) / max(self.model.predict(graph, p), 1e-12) for p in self.placements}
            best = max([1.0, *speedups.values()])
            metrics = {f"predicted_speedup/{p}": v for p, v in speedups.items()}
            metrics["predicted_kernel_speedup"] = math.exp(sum(math.log(v) for v in speedups.values()) / len(speedups))
            out.append(RungOutcome(Status.OK, metrics, {"predict": {"outcome": "ok", "seconds": time.perf_counter() - start}},
                                   bound=math.log(best) + self.margin))
        return out


class MeasuredRung:
    """A rung that runs some stages of the measured pipeline in the evaluation workers, at a chosen fidelity.

    Args:
        name: ``screen``, ``precise``, ``short`` or ``full``.
        runner: the evaluator whose workers run it (its ``measure_many``).
        task: the task (its reward settings and the ladder's margins).
        baseline: the baseline network's full-recipe metrics (``accuracy``).
        short_baseline: the baseline's metrics after the short recipe (``short`` only).
    """

    #: stages skipped and fidelity options per rung
    PLANS = {
        "screen": (("accuracy",), None),
        "precise": (("build", "budget", "accuracy"), {}),
        "short": (("build", "budget", "latency"), None),
        "full": (("build", "budget", "latency"), {}),
    }

    def __init__(self, name: str, runner: Any, task: Any, baseline: dict, short_baseline: dict | None = None) -> None:
        self.name, self.runner, self.task = name, runner, task
        self.baseline, self.short_baseline = baseline, short_baseline
        skip, options = self.PLANS[name]
        ladder = task.ladder
        if name == "screen":
            options = {"latency": {"time_s": ladder.screen_time_s, "max_time_s": ladder.screen_time_s, "repeats": 5, "warmup": 1}}
        elif name == "short":
            options = {"train_fraction": ladder.short_fraction}
        self.skip, self.options = skip, options

    def run(self, items: Sequence[tuple]) -> list:
        raws = self.runner.measure_many([ev for ev, _ in items], self.skip, self.options)
        return [self._outcome(raw, before) for raw, (_, before) in zip(raws, items, strict=True)]

    def _outcome(self, raw: Any, before: list) -> RungOutcome:
        metrics = {k: v for k, v in raw.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "pruned" in raw.metrics:
            metrics["pruned"] = 1.0
        if not raw.status.is_ok():
            return RungOutcome(raw.status, metrics, dict(raw.stages), raw.cause, device=dict(raw.device))
        return getattr(self, f"_{self.name}")(metrics, raw, before)

    def _speed(self, before: list, metrics: dict) -> float:
        """The kernel's measured network speedup: this rung's, else the most precise rung before's."""
        for m in [metrics] + [b.metrics for b in reversed(before)]:
            if "speedup" in m:
                return float(m["speedup"])
        raise KeyError("no rung before measured the speedup")

    def _screen(self, metrics: dict, raw: Any, before: list) -> RungOutcome:
        spread = float(metrics.get("speedup_spread", 0.0))
        metrics = {f"screen_{k}" if k.startswith(("speedup", "kernel_", "latency", "baseline_latency")) else k: v for k,
                   v in metrics.items()}
        speed = float(metrics["screen_speedup"])
        return RungOutcome(Status.OK, metrics, dict(raw.stages), bound=_squashed(math.log(speed), self.task.reward),
                           noise=self.task.ladder.screen_margin + 2 * spread, device=dict(raw.device))

    def _precise(self, metrics: dict, raw: Any, before: list) -> RungOutcome:
        spread = float(metrics.get("speedup_spread", 0.0))
        return RungOutcome(Status.OK, metrics, dict(raw.stages), bound=_squashed(math.log(metrics["speedup"]), self.task.reward),
                           noise=2 * spread, device=dict(raw.device))

    def _short(self, metrics: dict, raw: Any, before: list) -> RungOutcome:
        from kasrl.eval.measured import reward_from

        spec = self.task.reward
        speed = self._speed(before, {})
        full, short = self.baseline["accuracy"], self.short_baseline["accuracy"]
        expected = float(metrics.pop("accuracy")) + (full - short)  # a short run's accuracy, lifted by the baseline's own gain
        metrics = {f"short_{k}": v for k, v in metrics.items()}
        metrics["short_expected_accuracy"] = expected
        speed_bound = _squashed(math.log(speed), spec)
        estimate = reward_from({"speedup": speed, "accuracy": expected}, full, spec)
        noise = spec.slope * self.task.ladder.accuracy_noise if estimate < speed_bound else 0.0
        bound = min(speed_bound, estimate)
        return RungOutcome(Status.OK, metrics, dict(raw.stages), bound=bound, noise=noise,
                           screened="accuracy" if estimate < speed_bound else "slow", device=dict(raw.device))

    def _full(self, metrics: dict, raw: Any, before: list) -> RungOutcome:
        from kasrl.eval.measured import reward_from

        base = self.baseline["accuracy"]
        speed = self._speed(before, {})
        metrics.update(baseline_accuracy=base, accuracy_gap=base - metrics["accuracy"])
        reward = reward_from({"speedup": speed, "accuracy": metrics["accuracy"]}, base, self.task.reward)
        return RungOutcome(Status.OK, metrics, dict(raw.stages), bound=reward, reward=reward, device=dict(raw.device))

    def close(self) -> None:
        """The runner is closed by whoever made it."""
