"""Callbacks of a PPO run: stop at the budget, forward training metrics, checkpoint, best-so-far.

SB3 callbacks (``_on_step() -> bool``; False ends ``learn()``):

* :class:`StopOnBudget` -- ends training on the step the run's budget runs out;
* :class:`TrainMetrics` -- forwards SB3's ``train/*`` values and episode statistics
  to the run's tracker, against the evaluations done;
* :class:`RunCheckpoint` -- saves the agent and the run state every few evaluations.

A run callback (``kasrl.experiment.budget.Callback``, ``on_result(record) -> bool``):

* :class:`BestMetrics` -- logs the speedup, accuracy and cost ratios of the best kernel so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from kasrl.experiment.budget import Callback, ResultRecord

__all__ = ["StopOnBudget", "TrainMetrics", "RunCheckpoint", "BestMetrics"]


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


class RunCheckpoint(BaseCallback):
    """Saves the agent and the run state every ``every`` evaluations.

    It saves when a rollout starts, right after an update, so the saved policy
    and optimizer are those of a finished update (a rollout in progress is not
    saved; on resume its evaluations stay spent and its steps are collected anew).

    Args:
        save: writes the checkpoint (e.g. ``lambda: run.save_checkpoint(agent_state(model, opts))``).
        step: returns the evaluations done so far.
        every: evaluations between checkpoints (0: never; the caller saves at the end).
    """

    def __init__(self, save: Callable[[], Any], step: Callable[[], int], every: int) -> None:
        super().__init__()
        self.save = save
        self.step = step
        self.every = every
        self.saved_at = step()
        self.saves = 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        done = self.step()
        if self.every > 0 and done - self.saved_at >= self.every:
            self.save()
            self.saved_at = done
            self.saves += 1


class BestMetrics(Callback):
    """Logs the best kernel's figures so far: ``search/best_speedup``, ``search/best_accuracy``...

    The best kernel is the successful one with the highest reward; its metrics
    (those of ``speedup``, ``accuracy``, ``flops_ratio``, ``params_ratio`` it has)
    are logged after every evaluation, at ``step = evaluations done``.

    Args:
        tracker: the run's tracker.
        initial: records seen before (a resumed run's leaderboard), not logged again.
    """

    KEYS = ("speedup", "accuracy", "flops_ratio", "params_ratio")

    def __init__(self, tracker: Any, initial: Sequence[ResultRecord] = ()) -> None:
        self.tracker = tracker
        self.best_reward = -math.inf
        self.best: dict = {}
        for record in initial:
            self._update(record)

    def _update(self, record: ResultRecord) -> None:
        r = record.result
        if r.status.is_ok() and r.reward > self.best_reward:
            self.best_reward = r.reward
            self.best = {f"search/best_{k}": float(r.metrics[k]) for k in self.KEYS if _is_number(r.metrics.get(k))}

    def on_result(self, record: ResultRecord) -> bool:
        """Update the best kernel's figures and log them."""
        self._update(record)
        if self.best:
            self.tracker.log(self.best, step=record.index)
        return True


def _is_number(value: Any) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
