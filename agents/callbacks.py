"""Callbacks of PPO's training loop: stop at the budget, forward training metrics.

SB3 callbacks (``_on_step() -> bool``; False ends ``learn()``):

* :class:`StopOnBudget` -- ends training on the step the run's budget runs out;
* :class:`TrainMetrics` -- forwards SB3's ``train/*`` values and episode statistics
  to the run's tracker, against the evaluations done;

(The run state is checkpointed by the study's loop, :meth:`kasrl.study.Study.optimize`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["StopOnBudget", "TrainMetrics"]


class StopOnBudget(BaseCallback):
    """Ends ``learn()`` as soon as the run's budget is spent.

    SB3 calls ``on_step`` right after the vectorised env stepped and before the
    transition goes into the rollout buffer, so the step that spent the budget
    (and any :class:`~agents.ppo.BudgetGuard` truncation on it) never reaches an update.

    Args:
        evaluator: the run's budgeted evaluator (``.exhausted``).
    """

    def __init__(self, evaluator: Any) -> None:
        super().__init__()
        self.evaluator = evaluator

    def _on_step(self) -> bool:
        return not self.evaluator.exhausted


class TrainMetrics(BaseCallback):
    """Forwards SB3's training metrics to a run tracker, at the evaluations done.

    SB3 records ``train/*`` during an update and writes them out at the next
    ``dump``; this callback reads them when the next rollout starts (right after
    the update) and logs them with ``rollout/ep_rew_mean``, ``rollout/ep_len_mean``
    and ``train/entropy`` (the policy's mean entropy, nats) at
    ``step = evaluations done`` so they share the x-axis of the ``eval/*`` metrics.

    Args:
        tracker: the run's tracker (``.log(metrics, step)``).
        step: returns the evaluations done so far.
    """

    def __init__(self, tracker: Any, step: Callable[[], int]) -> None:
        super().__init__()
        self.tracker = tracker
        self.step = step
        self._last_updates = -1

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.flush()

    def _on_training_end(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Log the latest update's values (once per update) and the episode statistics."""
        values = self.model.logger.name_to_value
        metrics = {}
        updates = values.get("train/n_updates", self._last_updates)
        if updates != self._last_updates:
            self._last_updates = updates
            for key, value in values.items():
                if key.startswith("train/") and _is_number(value):
                    metrics[key] = float(value)
            if "train/entropy_loss" in metrics:
                metrics["train/entropy"] = -metrics["train/entropy_loss"]
        episodes = list(self.model.ep_info_buffer or [])
        if episodes:
            metrics["rollout/ep_rew_mean"] = sum(e["r"] for e in episodes) / len(episodes)
            metrics["rollout/ep_len_mean"] = sum(e["l"] for e in episodes) / len(episodes)
        metrics["time/env_steps"] = float(self.model.num_timesteps)
        self.tracker.log(metrics, step=int(self.step()))


def _is_number(value: Any) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
