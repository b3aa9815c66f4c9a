"""The Python API: a study searches one task with one strategy, in the style of Optuna's ask/tell.

>>> study = Study(task="digits_cnn", strategy="random", fidelity="analytic", out=str(tmp), store=str(tmp / "r.db"),
...               budget={"evaluations": 6}, wandb={"mode": "disabled"}, progress=False)  # doctest: +SKIP
>>> study.optimize()  # doctest: +SKIP
>>> study.best_kernels[0].result.reward  # doctest: +SKIP

or, driving the loop yourself (a notebook, your own evaluator)::

    proposal = study.ask()                       # a finished, solved kernel from the strategy
    result = study.evaluate(proposal.kernel)     # budgeted, cached in the store, logged
    study.tell(proposal, result)                 # the strategy learns from it

``train_agent.py``, ``evolve.py`` and ``compete.py`` are thin wrappers over
:class:`Study`; every strategy runs through the same loop (:meth:`Study.optimize`)::

    while evaluations and seconds remain:
        proposals = strategy.ask_many(strategy.batch_size())
        results = evaluate_rounds(their kernels, `workers` at a time)   # budgeted, cached, maybe parallel
        strategy.tell(proposal, result) for each
        strategy.after_round(evaluations done)
        checkpoint every `checkpoint_every` evaluations
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult, objective_names
from kasrl.experiment.budget import BudgetExhausted, Callback, evaluate_rounds
from kasrl.experiment.config import RunConfig, from_mapping
from kasrl.ir.graph import KernelGraph
from kasrl.strategy import Proposal, Strategy, StrategyContext, make_options, make_strategy

__all__ = ["Study"]


class Study:
    """One search: a task, a strategy, a budget, a run folder, the shared results store.

    Args:
        config: a :class:`~kasrl.experiment.config.RunConfig` (default: its defaults).
        resume: continue the run in this folder (with its saved config unless
            ``config`` is given; ``fields`` still override it, e.g. a larger budget).
        tracker: False for no wandb at all (tests).
        progress: show a progress bar while optimising.
        **fields: run-config fields over ``config`` (``task="digits_cnn"``,
            ``strategy="aging"``, ``options={"population": 8}``,
            ``budget={"evaluations": 30}``, ``fidelity="analytic"``...); unknown
            keys and wrong types fail with one line naming the key.

    Attributes:
        cfg: the run config in force.
        run: the run's plumbing (folder, store, tracker, budgeted evaluator).
        strategy: the strategy (built from ``cfg.strategy`` and ``cfg.options``).
    """

    def __init__(self, config: RunConfig | None = None, *, resume: str | None = None, tracker: bool = True, progress: bool = True,
                 **fields: Any) -> None:
        from kasrl.experiment.config import load_saved
        from kasrl.experiment.run import Run

        if resume is not None and config is None:
            config = load_saved(resume)
        self.cfg = from_mapping(config or RunConfig(), fields)
        make_options(self.cfg.strategy, self.cfg.options)  # bad options fail before the run folder exists
        self.run = Run(self.cfg, self.cfg.strategy, resume_dir=resume, tracker=tracker, progress=progress)
        try:
            context = StrategyContext(self.run.space, self.cfg.seed, objective_names(self.cfg.fidelity), self.run.tracker.log,
                                      self.run.evaluator, self.cfg.top_k)
            self.strategy: Strategy = make_strategy(self.cfg.strategy, context, self.cfg.options)
            state = self.run.load_checkpoint() if resume is not None else None
            if state is not None:
                self.strategy.load_state_dict(state)
        except BaseException:
            self.run.close()
            raise
        self._asked: dict = {}  # id(proposal) -> proposal not yet told
        self._evaluated: set = set()  # ids of results that came from evaluate()
        self._saved_at = self.run.evaluator.spent
        self._closed = False
        self.confirmed: list = []

    # -- the loop ----------------------------------------------------------------------------
    def optimize(self, evaluations: int | None = None, seconds: float | None = None, callbacks: Sequence[Callback] = ()) -> list:
        """Run the strategy until the budget is spent; returns the best records (best first).

        Args:
            evaluations: a new evaluation budget for the run (a resumed run counts on from what it spent).
            seconds: a new time budget for the run.
            callbacks: notified of every evaluation (``on_result(record) -> bool``; False stops).

        Raises:
            KeyboardInterrupt: after saving a checkpoint (``Study(resume=run folder)`` continues).
        """
        ev = self.run.evaluator
        if evaluations is not None:
            ev.max_evaluations = int(evaluations)
        if seconds is not None:
            ev.max_seconds = float(seconds)
        ev.callbacks.extend(callbacks)
        self.run.start_progress()
        try:
            while not ev.exhausted:
                proposals = self.strategy.ask_many(max(1, min(self.strategy.batch_size(), ev.remaining)))
                if not proposals:
                    break
                try:
                    results = evaluate_rounds(ev, [p.kernel for p in proposals], self.cfg.workers)
                except BudgetExhausted:
                    break
                for p, r in zip(proposals, results, strict=False):  # fewer results than proposals once the budget is spent
                    self.strategy.tell(p, r)
                self.strategy.after_round(ev.spent)
                self._maybe_checkpoint()
        except KeyboardInterrupt:
            self.checkpoint()
            raise
        self.checkpoint()
        return self.best_kernels

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint_every
        if every and self.run.evaluator.spent - self._saved_at >= every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save the strategy's state with the budget and leaderboard (atomically)."""
        self.run.save_checkpoint(self.strategy.state_dict())
        self._saved_at = self.run.evaluator.spent

    # -- ask / tell ----------------------------------------------------------------------------
    def ask(self) -> Proposal:
        """The strategy's next kernel (``proposal.kernel``: finished and solved).

        Raises:
            BudgetExhausted: when the strategy has nothing more to propose.
        """
        (proposal,) = self.strategy.ask_many(1) or (None,)
        if proposal is None:
            raise BudgetExhausted("the strategy has nothing more to propose")
        self._asked[id(proposal)] = proposal
        return proposal

    def evaluate(self, kernel: KernelGraph) -> EvalResult:
        """Evaluate one kernel on the study's task: budgeted, cached in the store, logged.

        Raises:
            BudgetExhausted: when the budget is spent.
        """
        result = self.run.evaluator.evaluate(kernel)
        self._evaluated.add(id(result))
        return result

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Give the strategy the result of ``proposal`` (from :meth:`evaluate`, or
        your own evaluation: then it is counted and kept in the history and
        leaderboard, but not in the shared store, which holds this task's own
        evaluations only)."""
        if not isinstance(result, EvalResult):
            raise ConfigError(f"`result` must be an EvalResult, got {type(result).__name__}")
        self._asked.pop(id(proposal), None)
        if id(result) not in self._evaluated:
            self.run.evaluator.record(proposal.kernel, result)
        self._evaluated.discard(id(result))
        self.strategy.tell(proposal, result)
        self._maybe_checkpoint()

    # -- results -------------------------------------------------------------------------------
    @property
    def best_kernels(self) -> list:
        """The best distinct kernels that ran, best first
        (:class:`~kasrl.experiment.budget.ResultRecord`: ``.result``, ``.doc``)."""
        return self.run.top.best()

    @property
    def history(self) -> list:
        """One row per evaluation, in order (as ``history.json``)."""
        return list(self.run.evaluator.history)

    def finish(self, extra_summary: Mapping | None = None, confirm: bool | None = None, confirm_top: int | None = None,
               confirm_seeds: int | None = None) -> list:
        """Stop the strategy, write the best kernels, history and leaderboard, confirm the best; close.

        Args:
            extra_summary: more values for the tracker's summary.
            confirm: retrain the best kernels over seeds (:mod:`kasrl.eval.confirm`);
                default: when the task's ladder is on (a measured run).
            confirm_top: how many of the best kernels are confirmed (default: the task's ``ladder.confirm_top``).
            confirm_seeds: over how many training seeds (default: the task's ``ladder.confirm_seeds``).

        Returns:
            The leaderboard rows (best first).
        """
        self._close_strategy()
        self.strategy.export(self.run.dir)
        rows = self.run.finish({"strategy": self.cfg.strategy, **dict(extra_summary or {})}, close=False)
        try:
            if confirm is None:
                confirm = self.cfg.fidelity == "measured" and bool(self.run.task.ladder.rungs)
            if confirm and rows:
                self.confirmed = self.confirm(confirm_top, confirm_seeds)
        finally:
            self._closed = True
            self.run.close()
        return rows

    def confirm(self, top: int | None = None, seeds: int | None = None) -> list:
        """Retrain the best kernels over seeds, paired with the baseline (see :mod:`kasrl.eval.confirm`);
        writes ``confirmed.json`` and the leaderboard ranked by confirmed reward."""
        import json

        from kasrl.eval.confirm import confirm_records
        from kasrl.experiment.run import confirmed_leaderboard

        spec = self.run.task.ladder
        records = [r for r in self.best_kernels if "speedup" in r.result.metrics][: top or spec.confirm_top]
        mode = "process" if self.cfg.executor == "ray" else self.cfg.executor
        rows = confirm_records(self.run.task, records, seeds or spec.confirm_seeds, self.run.store, mode, self.run.name,
                               progress=self.run._progress)
        (self.run.dir / "confirmed.json").write_text(json.dumps(rows, indent=1))
        confirmed_leaderboard(self.run.dir, rows)
        self.run.tracker.summary({"search/best_confirmed_reward": max(r["confirmed_reward"] for r in rows)} if rows else {})
        return rows

    def _close_strategy(self) -> None:
        if not self._closed:
            self.strategy.close()

    def close(self) -> None:
        """Stop the strategy and the workers without writing the leaderboard (idempotent)."""
        if self._closed:
            return
        try:
            self._close_strategy()
        finally:
            self._closed = True
            self.run.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ev = self.run.evaluator
        return f"Study({self.run.name}: {ev.spent} evaluations, {time.strftime('%H:%M:%S', time.gmtime(ev.elapsed))} spent)"
