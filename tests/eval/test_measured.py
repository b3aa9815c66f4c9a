"""The measured evaluator: typed failures, crash isolation, the cache, and a real evaluation."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from agents.random_sampler import RandomSampler
from kasrl.eval.cache import CachedEvaluator
from kasrl.eval.measured import MeasuredEvaluator, reward_from
from kasrl.eval.task_space import task_search_setup
from kasrl.space import SearchSpace
from kasrl.store.records import Status
from kasrl.store.sqlite import SQLiteStore
from kasrl.tasks import load_task, task_from_dict
from tests.eval import planted
from tests.helpers import build

FAST = {"timeouts.build_s": 5, "timeouts.latency_s": 20, "timeouts.train_s": 30, "latency.repeats": 3, "latency.warmup": 1,
        "latency.time_s": 0.1, "latency.max_time_s": 0.1}


def _task(**extra):
    return task_from_dict(load_task("digits_cnn").to_dict(), overrides={**FAST, **extra})


@pytest.fixture(scope="module")
def isolated():
    ev = MeasuredEvaluator(_task(), isolation="process", memory_limit=3 << 30)
    ev._baseline = {"accuracy": 90.0}  # the failure paths do not need a trained baseline
    yield ev
    ev.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "kernel,status,cause",
    [
        (planted.NaNKernel, "numerics_error", "build: NumericsError: the output is not finite"),
        (planted.RaisingKernel, "build_error", "this kernel is broken on purpose"),
        (planted.SleepingKernel, "timeout", "build: ran past its limit of 5 s"),
        (planted.HogKernel, "oom", "build:"),
        (planted.SegfaultKernel, "crash", "SIGSEGV"),
    ],
)
def test_planted_failures_are_typed_and_the_evaluator_survives(isolated, kernel, status, cause):
    result = isolated.evaluate(kernel())
    assert result.status.label == status, result.cause
    assert cause in result.cause
    assert result.reward == getattr(isolated.task.reward.penalties, status) < 0
    # the same evaluator goes on: a good kernel (a depthwise-separable convolution) still evaluates, every stage
    placements, _, _ = task_search_setup(isolated.task)
    good = build([("conv", (0,), {"kh": 3, "kw": 3, "dilation": 1, "out": "depthwise"}),
                    ("projection", (0,), {"out": "C", "grouped": False})],
                 solve_at=placements)
    result = isolated.evaluate(good)
    assert result.status.is_ok(), result.cause
    assert set(result.stages) == {"build", "budget", "latency", "accuracy"} and result.metrics["accuracy"] > 10


def test_inline_failures_never_raise():
    ev = MeasuredEvaluator(_task(), isolation="inline", skip=("accuracy",))
    assert ev.evaluate(planted.NaNKernel()).status == Status.NUMERICS_ERROR
    assert ev.evaluate(planted.RaisingKernel()).status == Status.BUILD_ERROR


def test_reward_rewards_speed_only_within_the_tolerance():
    spec = load_task("digits_cnn").reward
    assert reward_from({"speedup": 2.0, "accuracy": 89.5}, 90.0, spec) == pytest.approx(0.693147, abs=1e-5)
    far = reward_from({"speedup": 2.0, "accuracy": 80.0}, 90.0, spec)
    raw = -spec.slope * (10.0 - spec.tolerance)  # no speed reward beyond the tolerance
    assert far == pytest.approx(spec.floor * math.tanh(raw / spec.floor)) and far == pytest.approx(raw, abs=0.05)
    slow_far = reward_from({"speedup": 0.5, "accuracy": 80.0}, 90.0, spec)
    assert slow_far < far  # but a slowdown still costs
    useless = reward_from({"speedup": 0.01, "accuracy": 10.0}, 90.0, spec)  # learns nothing, and slow
    worse = reward_from({"speedup": 0.005, "accuracy": 10.0}, 90.0, spec)
    assert spec.floor < worse < useless < slow_far  # still ordered, and above the floor
    assert worse > max(spec.penalties[f] for f in ("build_error", "numerics_error", "budget_violation", "timeout", "oom", "crash"))


def test_a_small_real_evaluation_on_digits_and_the_cache(tmp_path):
    task = _task()
    placements, budget, latency = task_search_setup(task)
    space = SearchSpace(placements, budget, latency=latency)
    kernel = RandomSampler(space, seed=0, steps=(5, 8)).ask().kernel
    store = SQLiteStore(tmp_path / "r.db")
    inner = MeasuredEvaluator(task, store, isolation="inline")
    ev = CachedEvaluator(inner, store, run_id="t", strategy="test")
    start = time.perf_counter()
    first = ev.evaluate(kernel)
    assert first.status.is_ok(), first.cause
    m = first.metrics
    assert 0 <= m["accuracy"] <= 100 and m["speedup"] > 0 and m["latency_ms"] > 0 and "baseline_accuracy" in m
    assert first.objectives == (m["speedup"], m["accuracy"])
    assert time.perf_counter() - start < 120
    calls = []
    inner.evaluate = lambda k: calls.append(k)  # a cache hit must not evaluate again
    again = ev.evaluate(kernel)
    assert again.cached and not calls and again.reward == first.reward
    # a different task fingerprint misses
    other = CachedEvaluator(MeasuredEvaluator(_task(seed=1), store, isolation="inline"), store)
    assert other.lookup(kernel) is None
    # the baseline is cached in the store too
    assert store.lookup(task.fingerprint, "baseline", fidelity="measured") is not None


@pytest.mark.slow
def test_kill_9_mid_evaluation_keeps_every_committed_row(tmp_path):
    db = tmp_path / "r.db"
    script = textwrap.dedent(f"""
        import sys
        from agents.random_sampler import RandomSampler
        from kasrl.eval.cache import CachedEvaluator
        from kasrl.eval.measured import MeasuredEvaluator
        from kasrl.eval.task_space import task_search_setup
        from kasrl.space import SearchSpace
        from kasrl.store.sqlite import SQLiteStore
        from kasrl.tasks import load_task, task_from_dict
        if __name__ == "__main__":
            task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={FAST!r})
            store = SQLiteStore(r"{db}")
            ev = CachedEvaluator(MeasuredEvaluator(task, store, isolation="process", skip=("accuracy",)), store)
            placements, budget, latency = task_search_setup(task)
            sampler = RandomSampler(SearchSpace(placements, budget, latency=latency), seed=3)
            while True:
                ev.evaluate(sampler.ask().kernel)
                print("committed", store.count(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    committed = 0
    deadline = time.time() + 240
    while committed < 3 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("committed"):
            committed = int(line.split()[1])
    time.sleep(0.5)  # most likely in the middle of the next evaluation
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 3
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    store = SQLiteStore(db)
    assert store.count() >= committed



def test_kernels_of_a_task_with_a_latency_budget_are_measured_not_refused():
    """The latency budget is the masks' (a model's prediction); the evaluation measures latency instead of checking it."""
    task = task_from_dict(load_task("digits_cnn").to_dict(), overrides={**FAST, "budget.latency": 1.0})
    placements, budget, latency = task_search_setup(task)
    assert latency is not None
    kernel = RandomSampler(SearchSpace(placements, budget, latency=latency), seed=0).ask().kernel
    ev = MeasuredEvaluator(task, None, isolation="inline", skip=("accuracy",))
    try:
        r = ev.evaluate(kernel)
    finally:
        ev.close()
    assert r.status == Status.OK, r.cause
    assert r.metrics["speedup"] > 0 and r.stages["budget"]["outcome"] == "ok"
