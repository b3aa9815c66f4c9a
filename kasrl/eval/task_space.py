"""Glue between a task config and the search space: where kernels go and what they may spend."""

from __future__ import annotations

__all__ = ["task_search_setup"]


def task_search_setup(task_or_path) -> tuple:
    """``(placements, budget)`` of a task: every placement the kernel is searched
    for and timed at (search placements recorded from the network, plus any
    separate latency placements), and the task's budget.

    Raises:
        ConfigError: for a task file that does not load.
    """
    from kasrl.tasks import build_task_network, latency_placements, load_task, task_placements

    task = load_task(task_or_path) if not hasattr(task_or_path, "fingerprint") else task_or_path
    model, _ = build_task_network(task)
    search = task_placements(task, model)
    timed = latency_placements(task, search, model)
    placements = tuple(dict.fromkeys(tuple(search) + tuple(timed)))
    return placements, task.budget
