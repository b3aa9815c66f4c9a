"""The ask/tell loop that drives any :class:`~kasrl.strategy.Strategy` within a run's budget.

Pseudocode::

    while evaluations and seconds remain:
        proposals = [strategy.ask() for each worker]        # one batch keeps every worker busy
        results = evaluator.evaluate_many(proposals)        # budgeted, cached, maybe parallel
        strategy.tell(proposal, result) for each pair
        checkpoint(strategy state, budget counters, leaderboard)
"""

from __future__ import annotations

from kasrl.experiment.budget import BudgetExhausted
from kasrl.strategy import Strategy

__all__ = ["drive"]


def drive(strategy: Strategy, run, batch: int = 1) -> None:
    """Run ``strategy`` until the run's budget is spent, checkpointing after every batch."""
    ev = run.evaluator
    while not ev.exhausted:
        proposals = [strategy.ask() for _ in range(min(batch, ev.remaining))]
        try:
            results = ev.evaluate_many([p.kernel for p in proposals])
        except BudgetExhausted:
            break
        for p, r in zip(proposals, results):
            strategy.tell(p, r)
        run.save_checkpoint(strategy.state_dict())
