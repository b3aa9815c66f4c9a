"""The results cache reuses a result only on the hardware that measured it (the analytic fidelity anywhere)."""

from __future__ import annotations

import pytest

import kasrl.eval.latency as latency
from kasrl.eval.base import AnalyticEvaluator, EvalResult, Evaluator
from kasrl.eval.cache import CachedEvaluator
from kasrl.eval.executors import PoolEvaluator
from kasrl.eval.measured import BASELINE, MeasuredEvaluator
from kasrl.eval.outcome import StageOutcome
from kasrl.store.memory import MemoryStore
from kasrl.store.records import EvalRecord, Status
from kasrl.store.sqlite import SQLiteStore
from kasrl.tasks import load_task, task_from_dict

FAST = {"timeouts.build_s": 5, "timeouts.latency_s": 20, "latency.repeats": 3, "latency.warmup": 1, "latency.time_s": 0.05,
        "latency.max_time_s": 0.05}


class _OnHardware(Evaluator):
    """A measured evaluator whose hardware the test sets; counts its evaluations."""

    fidelity = "measured"
    task_fingerprint = "task-x"

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls = 0

    def hardware_keys(self) -> tuple:
        return (self.key,)

    def evaluate(self, kernel) -> EvalResult:
        self.calls += 1
        return EvalResult(Status.OK, float(self.calls), {"speedup": 1.0 + self.calls, "accuracy": 50.0}, fidelity="measured",
                          device={"hardware": self.key, "gpu": f"GPU {self.key}"})


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_the_cache_hits_on_the_same_hardware_and_misses_on_other_hardware(digits_kernels, tmp_path, backend):
    """A result is reused on its hardware only, in both stores."""
    store = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "r.db")
    inner = _OnHardware("A")
    ev = CachedEvaluator(inner, store)
    kernel = digits_kernels[0]
    first = ev.evaluate(kernel)
    again = ev.evaluate(kernel)
    assert inner.calls == 1 and again.cached and again.reward == first.reward and again.device["hardware"] == "A"
    inner.key = "B"  # the same kernel, task and fidelity, measured elsewhere
    other = ev.evaluate(kernel)
    assert inner.calls == 2 and not other.cached and other.device["hardware"] == "B"
    assert ev.evaluate_many([kernel, digits_kernels[1]])[0].reward == other.reward and inner.calls == 3  # the batch path too
    inner.key = "A"
    assert ev.evaluate(kernel).reward == first.reward and inner.calls == 3  # A's own result is still there
    store.close()


def test_the_analytic_fidelity_is_reused_on_any_hardware(digits, digits_kernels):
    """Analytic results do not depend on hardware and are not narrowed."""
    _, placements, _ = digits
    store = MemoryStore()
    inner = AnalyticEvaluator(placements)
    assert inner.hardware_keys() is None
    first = CachedEvaluator(inner, store).evaluate(digits_kernels[0])
    assert first.device == {} and CachedEvaluator(AnalyticEvaluator(placements), store).lookup(digits_kernels[0]).cached


def test_a_pool_reuses_results_of_any_of_its_workers_hardware():
    """A pool's keys are its workers' together (None for analytic workers)."""
    pool = PoolEvaluator(lambda i: _OnHardware("AB"[i % 2]), workers=3)
    try:
        assert pool.hardware_keys() == ("A", "B")
    finally:
        pool.close()
    analytic = PoolEvaluator(lambda i: AnalyticEvaluator(()), workers=2)  # analytic workers: no narrowing at all
    try:
        assert analytic.hardware_keys() is None
    finally:
        analytic.close()


def test_old_rows_without_a_hardware_key_are_not_reused(digits_kernels):
    """Rows stored before results had a hardware key miss."""
    from kasrl.ir.canonical import kernel_hash
    from kasrl.ir.serialize import dumps

    store = MemoryStore()
    kernel = digits_kernels[0]
    store.append(EvalRecord("task-x", kernel_hash(kernel), dumps(kernel), Status.OK, 9.0, {"speedup": 9.0}, {},
                            {"cpu": "Old CPU", "torch": "2.13.0", "threads": 1}, "old-run", "random", "measured"))
    inner = _OnHardware("A")
    assert CachedEvaluator(inner, store).evaluate(kernel).reward == 1.0 and inner.calls == 1


def test_a_real_evaluation_records_its_hardware_and_another_cpu_misses(digits_kernels, tmp_path, monkeypatch):
    """A measured result on another CPU model is not reused."""
    monkeypatch.setenv("KASRL_TIMING_LOCK", str(tmp_path / "timing.lock"))
    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides=FAST)
    store = SQLiteStore(tmp_path / "r.db")
    here = CachedEvaluator(MeasuredEvaluator(task, store, isolation="inline", skip=("accuracy",)), store)
    kernel = digits_kernels[0]
    first = here.evaluate(kernel)
    assert first.status.is_ok(), first.cause
    device = first.device
    assert device["kind"] == "cpu" and device["dtype"] == "fp32" and device["threads"] == task.latency.threads
    assert device["hardware"] == latency.hardware_key(device) and here.evaluate(kernel).cached
    monkeypatch.setattr(latency, "_cpu_model", lambda: "Another CPU")  # a second machine sharing the store
    there = CachedEvaluator(MeasuredEvaluator(task, store, isolation="inline", skip=("accuracy",)), store)
    assert there.hardware_keys() != here.hardware_keys()
    assert there.lookup(kernel) is None
    measured_there = there.evaluate(kernel)
    assert not measured_there.cached and measured_there.device["cpu"] == "Another CPU"
    assert here.evaluate(kernel).device["cpu"] != "Another CPU"  # each machine keeps its own
    store.close()


def test_the_baseline_is_trained_again_on_other_hardware(monkeypatch):
    """The baseline's accuracy is cached per hardware too."""
    store = MemoryStore()
    task = load_task("digits_cnn")
    store.append(EvalRecord(task.fingerprint, BASELINE, "{}", Status.OK, 0.0, {"accuracy": 12.5}, {}, {"hardware": "elsewhere"},
                            "old", BASELINE, "measured"))
    ev = MeasuredEvaluator(task, store, isolation="inline")
    runs = []

    def train(kind, payload):
        runs.append(kind)
        return StageOutcome(Status.OK, "", {"accuracy": 91.0}, {}, {"hardware": ev.hardware_keys()[0]})

    monkeypatch.setattr(ev, "_run", train)
    assert ev.baseline()["accuracy"] == 91.0 and runs == ["baseline"]
    again = MeasuredEvaluator(task, store, isolation="inline")
    assert again.baseline()["accuracy"] == 91.0  # read back from the store: the same hardware
    assert store.lookup(task.fingerprint, BASELINE, hardware=again.hardware_keys()).device["hardware"] == again.hardware_keys()[0]


def test_an_outcome_the_parent_makes_says_where_the_worker_ran():
    """A timeout made by the parent carries the child's device."""
    from tests.eval.test_isolation import FakeClock, _fake_worker

    worker, child = _fake_worker(clock=FakeClock(step=100.0))
    worker.device_info = {"kind": "cuda", "gpu": "Fake GPU", "hardware": "k1"}
    child.send(("stage", "build"))
    out = worker.request("eval", {"doc": "{}"})
    assert out.status == Status.TIMEOUT and out.device == worker.device_info
    sent = StageOutcome(Status.OK, "", {}, {}, {"hardware": "k2"})
    assert sent.with_device({"hardware": "k1"}) is sent  # what the worker said is kept
