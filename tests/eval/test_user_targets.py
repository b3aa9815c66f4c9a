"""A user's network and dataset, named by import path, evaluated in worker processes and on Ray actors.

The task travels as plain data (``Task.to_dict()``); each worker imports
``tests.tasks.userland`` by name itself. Ray tests run inside a loopback-only
network namespace (``conftest.py``).
"""

from __future__ import annotations

import random

import pytest

from kasrl.eval.task_space import task_search_setup
from kasrl.space import SearchSpace
from kasrl.tasks import task_from_dict
from tests.eval.conftest import IN_NETNS
from tests.helpers import rollout

U = "tests.tasks.userland"


@pytest.fixture(scope="module")
def user_task():
    """TinyNet on scikit-learn's digits, both named by import path; a short recipe and quick timings."""
    return task_from_dict({
        "name": "user_targets",
        "network": {"target": f"{U}:tiny_net", "kwargs": {"width": 8}},
        "dataset": {"target": f"{U}:digits_items", "train_size": 600, "test_size": 200},  # item by item: the DataLoader path
        "recipe": {"epochs": 2.0, "batch_size": 32, "lr": 0.01, "schedule": "onecycle"},
        "latency": {"time_s": 0.05, "max_time_s": 0.05, "repeats": 3, "warmup": 1},
    })


@pytest.fixture(scope="module")
def user_kernel(user_task):
    placements, budget, latency = task_search_setup(user_task)
    return rollout(SearchSpace(placements, budget, latency=latency), random.Random(0), 4, 10)


def _check(ev, kernel) -> None:
    """The worker loaded the task (imported the targets), trained the baseline and ran a kernel."""
    base = ev.baseline()
    assert base["accuracy"] > 30  # chance is 10%
    out = ev.measure(kernel, skip=("latency",))
    assert out.status.is_ok(), out.cause
    assert out.metrics["placements"] == ["8x8x8", "16x4x4"] and 0 <= out.metrics["accuracy"] <= 100


def test_a_worker_process_imports_the_users_network_and_data_by_name(user_task, user_kernel):
    from kasrl.eval.measured import MeasuredEvaluator

    ev = MeasuredEvaluator(user_task, isolation="process")
    try:
        _check(ev, user_kernel)
        assert ev._worker.proc.pid is not None  # it ran in the child, not here
    finally:
        ev.close()


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_actor_imports_the_users_network_and_data_by_name(user_task, user_kernel):
    from tests.eval.test_ray import ray_evaluator

    assert IN_NETNS
    ev = ray_evaluator(user_task, workers=1)
    try:
        _check(ev, user_kernel)
    finally:
        ev.close()
