"""The budget every strategy spends: one unit per request, cache hits and crashes included."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from kasrl.eval.base import AnalyticEvaluator
from kasrl.experiment.budget import BudgetedEvaluator, BudgetExhausted
from kasrl.space import SearchSpace
from kasrl.store.records import Status
from tests.helpers import rollout


@pytest.fixture(scope="module")
def kernels():
    space = SearchSpace()
    rng = random.Random(0)
    return space, [rollout(space, rng, 5, 8) for _ in range(3)]  # rollouts end with the finish action


class _Broken(AnalyticEvaluator):
    def evaluate(self, kernel):
        raise RuntimeError("the worker pool is closed")


class _Recorded(AnalyticEvaluator):
    """Answers like a cache hit whose stages took 40 s when they were measured."""

    def evaluate(self, kernel):
        r = super().evaluate(kernel)
        stages = {"latency": {"outcome": "ok", "seconds": 15.0}, "accuracy": {"outcome": "ok", "seconds": 25.0}}
        return replace(r, cached=True, stages=stages)


def test_a_raising_evaluator_is_a_charged_crash_not_an_endless_loop(kernels):
    space, ks = kernels
    ev = BudgetedEvaluator(_Broken(space.placements), evaluations=2)
    results = [ev.evaluate(ks[0]), *ev.evaluate_many(ks[1:])]
    assert [r.status for r in results][:2] == [Status.CRASH, Status.CRASH]
    assert "RuntimeError: the worker pool is closed" in results[0].cause
    assert ev.spent == 2 and ev.exhausted and [h["status"] for h in ev.history] == ["crash", "crash"]
    with pytest.raises(BudgetExhausted):
        ev.evaluate(ks[2])


def test_cache_hits_cost_a_unit_and_their_recorded_seconds(kernels):
    space, ks = kernels
    ev = BudgetedEvaluator(_Recorded(space.placements), evaluations=10, seconds=100.0)
    ev.evaluate(ks[0])
    ev.evaluate(ks[1])
    assert ev.spent == 2 and 80.0 <= ev.elapsed < 90.0 and not ev.exhausted
    ev.evaluate(ks[2])  # 120 recorded seconds > the 100 s budget
    assert ev.exhausted and ev.spent == 3
    resumed = BudgetedEvaluator(AnalyticEvaluator(space.placements), evaluations=10, seconds=200.0)
    resumed.load_state_dict(ev.state_dict())
    assert 120.0 <= resumed.elapsed < 130.0 and resumed.remaining == 7
