"""Executors: in-process and a local process pool give the same outcomes; a broken worker is replaced.

Ray, the third backend, is tested the same way in ``test_ray.py`` (inside a
loopback-only network namespace).
"""

from __future__ import annotations

import threading
import time

import pytest

from kasrl.eval.base import DEFAULT_PENALTIES, AnalyticEvaluator, EvalResult, Evaluator
from kasrl.eval.executors import PoolEvaluator
from kasrl.eval.measured import MeasuredEvaluator
from kasrl.store.memory import MemoryStore
from kasrl.store.records import Status
from tests.eval.planted import NaNKernel, RaisingKernel, SegfaultKernel, SleepingKernel

#: Accuracy points two evaluations of one kernel may differ by (training runs in
#: another process, possibly with another thread count; near-chance kernels vary most).
ACCURACY_NOISE = 10.0


def assert_same_outcomes(got: list, want: list) -> None:
    """Same status, cause and penalty; same FLOPs/params ratios; accuracy within noise (latency is not compared)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"kernel {i}: {g.status.label} / {w.status.label}, {g.cause!r} / {w.cause!r}"
        assert g.status == w.status, where
        assert g.kernel_hash == w.kernel_hash, where
        assert g.fidelity == w.fidelity == "measured", where
        if not g.status.is_ok():
            assert g.cause == w.cause and g.reward == w.reward, where
            continue
        for key in ("flops_ratio", "params_ratio"):
            assert g.metrics[key] == pytest.approx(w.metrics[key], rel=1e-9), (where, key)
        assert abs(g.metrics["accuracy"] - w.metrics["accuracy"]) <= ACCURACY_NOISE, where
        assert abs(g.metrics["baseline_accuracy"] - w.metrics["baseline_accuracy"]) <= ACCURACY_NOISE, where
        assert g.metrics["speedup"] > 0 and g.device["torch"] == w.device["torch"], where


def inline_reference(task, kernels) -> list:
    """What the in-process evaluator gives.

    It trains on one thread (this process's OpenMP threads spin-wait, so
    ``training_threads()`` gives 1) where a worker trains on every core: the
    accuracies differ by rounding, within :data:`ACCURACY_NOISE`.
    """
    return MeasuredEvaluator(task, isolation="inline").evaluate_many(kernels)


# -- fast: the pool's mechanics ---------------------------------------------------------------------
def test_analytic_rewards_are_the_same_in_process_and_on_a_pool(digits, digits_kernels):
    _, placements, _ = digits
    inline = AnalyticEvaluator(placements)
    pool = PoolEvaluator(lambda i: AnalyticEvaluator(placements), workers=2)
    try:
        want = inline.evaluate_many(digits_kernels)
        got = pool.evaluate_many(digits_kernels)
    finally:
        pool.close()
    assert pool.fidelity == "analytic" and pool.task_fingerprint == inline.task_fingerprint
    for g, w in zip(got, want, strict=True):
        assert (g.status, g.reward, g.metrics, g.objectives, g.kernel_hash) == (w.status, w.reward, w.metrics, w.objectives, w.kernel_hash)


class _Meeting(Evaluator):
    """Returns its kernel (an int) as the reward; the first ``meet`` calls wait for each other."""

    fidelity = "fake"

    def __init__(self, barrier: threading.Barrier, meet: int) -> None:
        self.barrier = barrier
        self.meet = meet

    def evaluate(self, kernel) -> EvalResult:
        if kernel < self.meet:
            self.barrier.wait()  # raises BrokenBarrierError unless every worker is in here at once
        return EvalResult(Status.OK, float(kernel))


def test_a_pool_evaluates_a_batch_on_every_worker_at_once_and_keeps_its_order():
    barrier = threading.Barrier(3, timeout=10)
    pool = PoolEvaluator(lambda i: _Meeting(barrier, meet=3), workers=3)
    try:
        results = pool.evaluate_many(list(range(8)))
    finally:
        pool.close()
    assert [r.reward for r in results] == [float(k) for k in range(8)]
    with pytest.raises(ValueError, match="`workers` must be at least 1, got 0"):
        PoolEvaluator(lambda i: _Meeting(barrier, 0), workers=0)


# -- slow: real evaluations in worker processes --------------------------------------------------------
@pytest.mark.slow
def test_a_process_pool_gives_the_outcomes_of_in_process_evaluation(digits, digits_kernels):
    task = digits[0]
    kernels = [digits_kernels[0], NaNKernel(), digits_kernels[1], RaisingKernel()]
    store = MemoryStore()
    first = MeasuredEvaluator(task, store, isolation="process")
    first.baseline()  # as make_evaluator does: trained once, then read from the store
    pool = PoolEvaluator(lambda i: first if i == 0 else MeasuredEvaluator(task, store, isolation="process"), workers=2)
    try:
        got = pool.evaluate_many(kernels)
    finally:
        pool.close()
    assert [r.status.label for r in got] == ["ok", "numerics_error", "ok", "build_error"]
    assert_same_outcomes(got, inline_reference(task, kernels))
    assert all(r.device["allocator_pinned"] for r in got if r.status.is_ok())  # workers start with the allocator pinned


@pytest.mark.slow
def test_a_crashed_or_hung_worker_is_replaced_and_the_search_goes_on(short_task, digits_kernels):
    workers = [MeasuredEvaluator(short_task, isolation="process", skip=("accuracy",)) for _ in range(2)]
    pool = PoolEvaluator(lambda i: workers[i], workers=2)
    try:
        first = pool.evaluate_many([SegfaultKernel(), SleepingKernel(), digits_kernels[0], NaNKernel()])
        restarts = sum(w._worker.restarts for w in workers)
        then = pool.evaluate_many([digits_kernels[1], RaisingKernel(), digits_kernels[2]])
    finally:
        pool.close()
    assert [r.status.label for r in first] == ["crash", "timeout", "ok", "numerics_error"]
    assert "SIGSEGV" in first[0].cause and first[0].reward == DEFAULT_PENALTIES["crash"]
    assert first[1].cause == "build: ran past its limit of 5 s; the worker was killed" and first[1].reward == DEFAULT_PENALTIES["timeout"]
    assert restarts == 2
    assert [r.status.label for r in then] == ["ok", "build_error", "ok"]


# -- timing never overlaps a neighbour's training -----------------------------------------------------


def test_training_waits_while_a_neighbour_times(quick_task, tmp_path, monkeypatch):
    from kasrl.eval.runtime import TaskRuntime, train_and_test
    from kasrl.eval.stages import timing_lock

    monkeypatch.setenv("KASRL_TIMING_LOCK", str(tmp_path / "timing.lock"))
    rt = TaskRuntime(quick_task)
    train_and_test(rt, rt.network(None))  # first-call set-up (seconds) out of the way
    model = rt.network(None)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    with timing_lock():  # a neighbour is timing a kernel
        trainer = threading.Thread(target=train_and_test, args=(rt, model), daemon=True)
        trainer.start()
        time.sleep(1.0)  # long enough for many training steps, were they allowed
        during = len(calls)
    trainer.join(60)
    assert during == 0, f"{during} training steps ran while a neighbour was timing"
    assert calls.count(True) > 0  # and training ran once the timing was over
