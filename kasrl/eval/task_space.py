"""Glue between a task config and the search space: where kernels go and what they may spend."""

from __future__ import annotations

__all__ = ["task_search_setup"]


def task_search_setup(task_or_path, latency: bool = True) -> tuple:
    """``(placements, budget, latency model)`` of a task: every placement the kernel
    is searched for and timed at (search placements recorded from the network, plus
    any separate latency placements), the task's budget, and the latency model its
    budget or ladder needs (None when it needs none, or ``latency`` is False).

    The model is the task's profile as :func:`kasrl.latency.task.task_latency_model`
    loads it (calibrated on first use), without refinement: a search run refines it
    from its store (:class:`kasrl.experiment.run.Run`).

    Raises:
        ConfigError: for a task file that does not load.
        ProfileError: for a latency profile that does not load.
    """
    from kasrl.latency.task import task_latency_model, task_placements
    from kasrl.tasks import load_task

    task = load_task(task_or_path) if not hasattr(task_or_path, "fingerprint") else task_or_path
    _, placements = task_placements(task)
    return placements, task.budget, task_latency_model(task, placements) if latency else None
