"""The ask/tell shape every search strategy shares.

A strategy proposes finished kernels (:meth:`Strategy.ask`), receives each
one's :class:`~kasrl.eval.base.EvalResult` (:meth:`Strategy.tell`) and can
save and restore its state. The random sampler, DEAP populations and the
competition harness use it; PPO is driven by its own rollouts but reports
through the same evaluator, so every strategy pays for evaluations the same way.

Pseudocode of a search::

    strategy = make_strategy(space, seed)
    while not budget.exhausted:
        proposal = strategy.ask()                 # a finished, solved kernel
        result = evaluator.evaluate(proposal.kernel)
        strategy.tell(proposal, result)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from kasrl.eval.base import EvalResult
from kasrl.ir.graph import KernelGraph

__all__ = ["Proposal", "Strategy", "BestTracker"]


@dataclass
class Proposal:
    """A kernel a strategy wants evaluated.

    Attributes:
        kernel: the finished, solved kernel.
        actions: the action sequence that built it (its genome, for DEAP).
        meta: strategy-specific data (generation, individual id, ...).
    """

    kernel: KernelGraph
    actions: tuple = ()
    meta: dict = field(default_factory=dict)


@dataclass
class BestTracker:
    """Best-so-far bookkeeping shared by strategies (reward, hash, evaluations)."""

    best_reward: float = float("-inf")
    best_hash: str = ""
    evaluations: int = 0

    def update(self, result: EvalResult) -> bool:
        """Record a result; True when it is a new best."""
        self.evaluations += 1
        if result.reward > self.best_reward:
            self.best_reward = result.reward
            self.best_hash = result.kernel_hash
            return True
        return False

    def state_dict(self) -> dict:
        """JSON-able state."""
        return {"best_reward": self.best_reward, "best_hash": self.best_hash, "evaluations": self.evaluations}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.best_reward, self.best_hash, self.evaluations = d["best_reward"], d["best_hash"], d["evaluations"]


class Strategy(ABC):
    """Base class of ask/tell search strategies.

    Subclasses implement :meth:`ask`, :meth:`tell`, :meth:`state_dict` and
    :meth:`load_state_dict`; ``name`` identifies the strategy in reports.
    """

    name: str = ""

    @abstractmethod
    def ask(self) -> Proposal:
        """Propose one finished, solved kernel."""

    @abstractmethod
    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Receive the result of evaluating ``proposal``."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue later (JSON- or pickle-able)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
