"""Search strategies: the ask/tell shape they share, and the registry that names them.

A strategy proposes finished kernels (:meth:`Strategy.ask`), receives each
one's :class:`~kasrl.eval.base.EvalResult` (:meth:`Strategy.tell`) and can save
and restore its state. It is given the search space, a seed, its own options
and a small :class:`StrategyContext` -- never the run, the store or the
evaluator -- and one loop drives every strategy (:meth:`kasrl.study.Study.optimize`)::

    strategy = make_strategy(name, context, options)
    while the budget lasts:
        proposals = strategy.ask_many(strategy.batch_size())   # one round (a generation, a rollout's ends)
        results = evaluator.evaluate_many(kernels of proposals)
        strategy.tell(proposal, result) for each
        strategy.after_round(evaluations done)
    strategy.close()

**The registry.** Every strategy is a class named by a YAML file in
``configs/strategies/<name>.yaml``: its import path (``target:
package.module:Class``), a one-line description and its default options (the
fields of the class's ``Options`` dataclass). ``make_strategy("aging", ...)``
reads that file, merges the options given on top (unknown keys fail with one
line naming them) and imports the class by its path. So adding a strategy
touches one module and one config file, and this library names no strategy in
its code (they live in ``agents/`` and ``evolution/``, which import it).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kasrl.errors import ConfigError
from kasrl.eval.base import EvalResult
from kasrl.ir.graph import KernelGraph

__all__ = [
    "Proposal",
    "Strategy",
    "StrategyContext",
    "StrategySpec",
    "BestTracker",
    "strategy_names",
    "strategy_spec",
    "make_strategy",
    "STRATEGIES_DIR",
]

STRATEGIES_DIR = Path(__file__).resolve().parent / "configs" / "strategies"
"""Where the registry's YAML files live (shipped with the package)."""


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


def _no_log(metrics: dict, step: int) -> None:
    pass


@dataclass
class StrategyContext:
    """What a strategy may use besides its options.

    Attributes:
        space: the search space (shared by every strategy of a run).
        seed: seeds every random choice of the strategy.
        objectives: names of the two objectives of ``EvalResult.objectives``
            (``("speedup", "accuracy")`` for measured results).
        log: ``log(metrics, step)`` to the run's tracker (step = evaluations done).
        budget: a read-only view of the run's budget (``remaining``,
            ``exhausted``, ``spent``); strategies that run their own loop inside
            (PPO) stop asking when it is spent.
        top_k: how many best kernels a strategy's own hall of fame keeps.
    """

    space: Any
    seed: int = 0
    objectives: tuple = ("speedup", "accuracy")
    log: Callable[[dict, int], None] = _no_log
    budget: Any = None
    top_k: int = 5


class Strategy(ABC):
    """Base class of ask/tell search strategies.

    Subclasses implement :meth:`ask`, :meth:`tell`, :meth:`state_dict` and
    :meth:`load_state_dict`, and may declare an ``Options`` dataclass (the keys
    of their registry file). ``name`` identifies the strategy in reports.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type | None] = None

    def __init__(self, context: StrategyContext, options: Any = None) -> None:
        self.context = context
        self.space = context.space
        self.seed = context.seed
        if options is None and self.Options is not None:
            options = self.Options()
        self.options = options

    @classmethod
    def create(cls, context: StrategyContext, options: Any) -> Strategy:
        """Build from the registry's ``(context, options)`` (override when the constructor differs)."""
        return cls(context, options)

    @abstractmethod
    def ask(self) -> Proposal:
        """Propose one finished, solved kernel."""

    def ask_many(self, n: int) -> list:
        """Up to ``n`` proposals (one round); an empty list ends the search."""
        return [self.ask() for _ in range(n)]

    def batch_size(self) -> int:
        """How many proposals make the next round (a generation; 1 for sequential strategies)."""
        return 1

    @abstractmethod
    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Receive the result of evaluating ``proposal``."""

    def after_round(self, evaluations: int) -> None:  # noqa: B027 - an optional hook
        """Called after each round's results were told (``evaluations``: done so far)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue later (JSON- or pickle-able)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release what the strategy holds (threads, environments); called once at the end."""

    def export(self, folder: Path) -> None:  # noqa: B027 - an optional hook
        """Write what a user keeps besides the kernels into the run ``folder`` (a trained policy...)."""


# -- the registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategySpec:
    """One registry entry: ``configs/strategies/<name>.yaml``."""

    name: str
    target: str
    description: str
    options: dict
    path: Path
    baseline: str | None = None
    """The strategy it is compared with in a competition: the one that draws from the same starting distribution."""


def strategy_names() -> list:
    """The registered strategies' names, sorted."""
    return sorted(p.stem for p in STRATEGIES_DIR.glob("*.yaml"))


def _unknown(name: str) -> ConfigError:
    known = strategy_names()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown strategy {name!r}{hint}; known: {', '.join(known)}")


def strategy_spec(name: str) -> StrategySpec:
    """The registry entry of ``name``.

    Raises:
        ConfigError: for an unknown name (listing the known ones) or a malformed file.
    """
    import yaml

    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _unknown(name)
    path = STRATEGIES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise _unknown(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"strategy file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    extra = set(data) - {"target", "description", "options", "baseline"}
    if extra or not isinstance(data.get("target"), str) or not isinstance(data.get("options", {}) or {}, Mapping):
        raise ConfigError(f"strategy file {path} must hold `target` (package.module:Class), `description`, `options` and `baseline` only")
    return StrategySpec(name, data["target"], str(data.get("description", "")), dict(data.get("options") or {}), path,
                        data.get("baseline") or None)


def _import(target: str, where: str) -> type:
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{where}: cannot import `{target}` ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise ConfigError(f"{where}: `{target}` is not a Strategy class")
    return obj


def strategy_class(name: str) -> type:
    """The class registered as ``name`` (imported by its path)."""
    spec = strategy_spec(name)
    return _import(spec.target, str(spec.path))


def make_options(name: str, overrides: Mapping | None = None) -> Any:
    """The ``Options`` of strategy ``name``: its class's defaults, then its registry
    file's, then ``overrides`` (checked by OmegaConf: unknown keys and wrong types
    fail with one line naming ``options.<key>``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    spec = strategy_spec(name)
    cls = _import(spec.target, str(spec.path))
    if cls.Options is None:
        if overrides:
            raise ConfigError(f"strategy {name!r} takes no options, got {', '.join(sorted(overrides))}")
        return None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Options), spec.options, dict(overrides or {}))
        options = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"`options.{key}` of strategy {name!r}: {str(e).splitlines()[0]}") from None
    check = getattr(options, "validate", None)
    if check is not None:
        check()
    return options


def make_strategy(name: str, context: StrategyContext, options: Mapping | Any = None) -> Strategy:
    """Build the strategy registered as ``name``.

    Args:
        name: a registry name (see :func:`strategy_names`).
        context: the space, seed and run hooks it may use.
        options: overrides of its options (a mapping), or a ready ``Options`` instance.

    Raises:
        ConfigError: for an unknown name or bad options, in one line.
    """
    cls = strategy_class(name)
    if options is None or isinstance(options, Mapping):
        options = make_options(name, options)
    elif cls.Options is not None and not isinstance(options, cls.Options):
        raise ConfigError(f"options of strategy {name!r} must be a mapping or {cls.Options.__name__}, got {type(options).__name__}")
    strategy = cls.create(context, options)
    strategy.name = name
    return strategy


def options_dict(options: Any) -> dict:
    """Plain data of an ``Options`` instance (for run folders and wandb)."""
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options or {})
